fn main() {
    eprintln!("tessera-loadgen is not built yet: see issue 3");
    std::process::exit(2);
}
