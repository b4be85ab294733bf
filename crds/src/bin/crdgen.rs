//! Prints the QueueConsumer CRD: `cargo run -p ferry-crds --bin crdgen > crds/queueconsumer.yaml`.

fn main() {
    print!("{}", ferry_crds::crd::crd_yaml());
}
