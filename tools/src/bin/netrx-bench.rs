fn main() {
    eprintln!("netrx-bench: not yet implemented");
    std::process::exit(2);
}
