pub mod grid;
pub mod netns;
pub mod run;
