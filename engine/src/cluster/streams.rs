//! JetStream streams of topics with history.
