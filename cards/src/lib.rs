//! Handout cards for a workshop: one card per student with the nodes, the login and the
//! first commands of the course. Pure rendering: the caller gathers the [`Card`]s and
//! writes the bytes where the user asked.

use serde::{Deserialize, Serialize};

/// One node as a student reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardNode {
    /// `W-s01-node1`.
    pub name: String,
    /// The address the student connects to (`ssh student@ADDRESS -p PORT`).
    pub address: String,
    pub port: u16,
    /// `manager` or `worker`.
    pub role: String,
}

/// What one student gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub workshop: String,
    /// `s01`.
    pub student: String,
    /// The student's cluster, `W-s01`.
    pub cluster: String,
    pub nodes: Vec<CardNode>,
    /// The login, `student`.
    pub login: String,
    /// The generated password, when students log in with one.
    pub password: Option<String>,
    /// The file of the student's private key, when students log in with keys.
    pub key_file: Option<String>,
    /// When the workshop's machines are taken away (RFC 3339, UTC), if it has a TTL.
    pub expires: Option<String>,
    /// The first commands of the course.
    pub commands: Vec<String>,
}

/// The formats `swarmup workshop cards --format` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Html,
    Pdf,
    Csv,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CardsError {
    #[error("there are no cards to render: the workshop has no student clusters yet")]
    Empty,
    #[error("cannot render the cards as {format}: {reason}")]
    Render {
        format: &'static str,
        reason: String,
    },
}

/// The cards in `format`, ready to write to a file or standard output.
pub fn render(cards: &[Card], format: Format) -> Result<Vec<u8>, CardsError> {
    if cards.is_empty() {
        return Err(CardsError::Empty);
    }
    let _ = format;
    Err(CardsError::Render {
        format: "any format",
        reason: "not implemented yet".into(),
    })
}
