//! `shoal`: parses the command line, runs one command, exits with its code (see
//! `shoal_cli::CliError::exit_code`).

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = shoal_cli::Cli::parse();
    let res = shoal_cli::run(&cli, &mut std::io::stdout()).await;
    if let Err(e) = res {
        eprintln!("shoal: {e:#}");
        std::process::exit(e.exit_code());
    }
}
