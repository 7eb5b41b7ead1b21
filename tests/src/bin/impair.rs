fn main() {
    eprintln!("impair: not yet implemented");
    std::process::exit(2);
}
