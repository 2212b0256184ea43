//! The `tollgate` binary: parses the command line and hands off to `cli`.
#![forbid(unsafe_code)]

use clap::Parser;

/// jemalloc instead of glibc's allocator: under load glibc kept freed memory
/// in its per-thread arenas, so the gateway's resident memory grew with every
/// request served (148 MB after 20k requests, 196 MB after 25k with a larger
/// sled cache), where jemalloc returns it and levels off (106 MB), at the
/// same CPU per request (BENCHMARKS.md, Gateway).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    quiet_on_closed_stdout();
    let cli = tollgate::cli::Cli::parse();
    let code = match tollgate::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            2
        }
    };
    std::process::exit(code);
}

/// `tollgate report … | head` closes stdout early; `println!` then panics.
/// Exit quietly as other Unix tools do (status 141, "killed by SIGPIPE")
/// instead of printing a panic for a reader that left.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") {
            std::process::exit(141);
        }
        default(info);
    }));
}
