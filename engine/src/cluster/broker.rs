//! The NATS broker: publishes go to NATS, and each node delivers what NATS brings
//! it for the topics it has subscribers for.
