pub mod grid;
pub mod netns;
