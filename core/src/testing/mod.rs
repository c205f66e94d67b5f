//! Test support (feature `testing`): the store contract suite and the
//! aggregate test kit.

pub mod contract;
