mod proto;
fn main() {}
