//! The sans-IO TCP receive endpoint.
