//! The CNI plugin side: spec types, the `CNI_*` environment, the plugin itself, and
//! `install-cni`.
//!
//! Design note: everything the runtime-facing binary needs is here and free of tokio,
//! so `podwire-cni` stays a small synchronous program that starts fast.

pub mod env;
pub mod install;
pub mod plugin;
pub mod spec;
