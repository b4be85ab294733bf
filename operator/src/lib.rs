//! ferry-operator: the QueueConsumer controller and its autoscaler.

pub mod autoscaler;
pub mod builders;
pub mod leader;
pub mod sim;
