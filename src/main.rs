// mimalloc: measured faster than glibc malloc on the proxy path (allocation
// and free were ~3.5% of CPU under load with glibc; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    baton::cli::run()
}
