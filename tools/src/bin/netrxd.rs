fn main() {
    eprintln!("netrxd: not yet implemented");
    std::process::exit(2);
}
