//! Recording HTTP receivers (filled in with the pipeline).
pub struct Receiver;
pub struct Received;
pub enum Behaviour {}
