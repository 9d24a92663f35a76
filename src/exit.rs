//! Exit codes shared by every binary. systemd units and the SLURM scripts rely on them.

/// Success.
pub const OK: i32 = 0;
/// An error: bad input, a refused operation, an unreachable database.
pub const ERROR: i32 = 1;
/// The command line itself is wrong (clap's own code).
pub const USAGE: i32 = 2;
/// A budget check or hold was denied (the job must not run).
pub const DENIED: i32 = 3;
/// A batch finished but some inputs were rejected.
pub const REJECTED: i32 = 4;
/// `asbb audit verify` found discrepancies.
pub const AUDIT_FAILED: i32 = 5;
/// The database schema is not the one this build knows (run `asbb database migrate`, or
/// upgrade asbb).
pub const SCHEMA: i32 = 6;
