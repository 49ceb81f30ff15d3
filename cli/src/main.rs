//! The `allot` binary: see `allot --help`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match allot_cli::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot: {}", allot_cli::cli::error_text(&e));
            if e.downcast_ref::<allot_cli::interrupt::Interrupted>()
                .is_some()
            {
                std::process::ExitCode::from(allot_cli::interrupt::EXIT_CODE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
