//! The operations shared by the `refstream` command line and the API: the same rules whichever
//! door an operator comes through.

pub mod dead_letters;
pub mod explain;
pub mod review;
pub mod summary;
