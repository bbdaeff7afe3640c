//! The `gocache-warden` binary: parse arguments, run, exit with a documented code.

fn main() {
    std::process::exit(gocache_warden::cli::main());
}
