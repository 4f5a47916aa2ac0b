//! The `creatio-proxy` binary: parse the command line, run, exit with the command's code.

fn main() {
    std::process::exit(creatio_proxy::cli::main());
}
