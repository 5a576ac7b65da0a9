//! PID 1 of a buildos host: everything lives in the library so it can be tested on the host.

fn main() {
    buildos_init::run()
}
