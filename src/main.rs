//! The `iron-carrier` binary: hands the command line to [`iron_carrier::cli::run`] and exits
//! with the code it returns. Nothing else lives here.

fn main() {
    let code = iron_carrier::cli::run(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
