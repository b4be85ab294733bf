//! `ferry-scalesim`'s engine: a discrete-time queue and its pods, the `ferry` policy (the
//! autoscaler's own code), a model of KEDA on the HPA, and a clairvoyant lower bound.

pub mod bench;
pub mod counts;
pub mod ferry;
pub mod keda;
pub mod model;
pub mod oracle;
pub mod plot;
mod random;
pub mod report;
pub mod summary;
pub mod trace;

#[cfg(test)]
mod tests;
