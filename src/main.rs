// mimalloc: measured faster than glibc malloc on the proxy path (allocation
// and free were ~3.5% of CPU under load with glibc; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points when the alignment asked for is
/// one every mimalloc block has (a word), and its aligned ones otherwise.
///
/// Written by hand rather than the `mimalloc` crate's allocator, which calls
/// `mi_malloc_aligned` for every allocation: whenever the size class's
/// free list is momentarily empty, mimalloc's aligned path does not refill
/// it but over-allocates from a larger class, so on the proxy path most
/// allocations of a non-power-of-two size took the slow path
/// (callgrind: ~1,100 instructions a request; docs/benchmarks.md).
struct Mimalloc;

/// Every mimalloc block is at least word-aligned (block sizes are whole
/// words).
const WORD: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc function with the same
// contract (plain for word alignment, which every block has; aligned
// otherwise); `mi_free`/`mi_realloc` accept blocks from either.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if l.align() <= WORD {
                mi::mi_malloc(l.size()).cast()
            } else {
                mi::mi_malloc_aligned(l.size(), l.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if l.align() <= WORD {
                mi::mi_zalloc(l.size()).cast()
            } else {
                mi::mi_zalloc_aligned(l.size(), l.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(p.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            if l.align() <= WORD {
                mi::mi_realloc(p.cast(), new).cast()
            } else {
                mi::mi_realloc_aligned(p.cast(), new, l.align()).cast()
            }
        }
    }
}

/// mimalloc's `mi_option_arena_eager_commit` (the fifth of `mi_option_e`
/// in the mimalloc v3 that libmimalloc-sys 0.1.49 builds; the crate names
/// no constant for it).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Arenas committed on demand, not all at once: mimalloc then gives purged
/// pages back to the system, and memory freed when connections go idle
/// leaves the process's resident set. Measured: memory per idle connection
/// after 9 000 connections went idle and were parked, 2.07 KB -> 1.00 KB
/// (docs/benchmarks.md).
///
/// Set from an `.init_array` entry (what a C constructor is), by hand
/// rather than through a crate for one call: mimalloc reserves its first
/// arena, committed or not, at the first allocation, and Rust's runtime
/// allocates before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = mimalloc_options;

extern "C" fn mimalloc_options() {
    // SAFETY: mi_option_set only stores the value (any option index is
    // accepted), and needs nothing initialised.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
}

fn main() -> std::process::ExitCode {
    baton::cli::run()
}
