//! The `tollgate` binary: parses the command line and hands off to `cli`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
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
