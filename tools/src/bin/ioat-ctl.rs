fn main() {
    eprintln!("ioat-ctl: not yet implemented");
    std::process::exit(2);
}
