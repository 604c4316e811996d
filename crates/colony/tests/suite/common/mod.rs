pub mod grid;
pub mod netns;
pub mod node;
pub mod run;
