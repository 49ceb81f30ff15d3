//! The `allot` binary: see `allot --help`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match allot::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot: {e:#}");
            if e.downcast_ref::<allot::interrupt::Interrupted>().is_some() {
                std::process::ExitCode::from(allot::interrupt::EXIT_CODE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
