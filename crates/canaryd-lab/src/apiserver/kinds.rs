//! The built-in kinds by identity: the one name that `registry` (how each is served),
//! `builtins` (its defaults and checks), `table` (its columns) and the store (its name rules
//! and what deleting it takes along) key their code on. Holds no behaviour of its own, so
//! those modules can share it without depending on one another.

/// Built-in kinds whose server behaviour (defaults, checks, columns) is written in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Namespace,
    Service,
    Secret,
    CoreEvent,
    Event,
    Deployment,
    Lease,
    CustomResourceDefinition,
}
