//! ferry-operator: the QueueConsumer controller and its autoscaler.

pub mod autoscaler;
pub mod builders;
pub mod control_key;
pub mod controller;
pub mod events;
pub mod leader;
pub mod scaling;
pub mod sim;
pub mod watches;
