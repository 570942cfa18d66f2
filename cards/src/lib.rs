//! Handout cards for a workshop: one card per student with the nodes, the login and the
//! first commands of the course. Pure rendering: the caller gathers the [`Card`]s and
//! writes the bytes where the user asked.
//!
//! HTML and PDF print eight cards per A4 page, two columns by four rows, with the same
//! geometry (`sheet`) and the same content (`view::CardView`). CSV and JSON carry the
//! data for mail merges and scripts.

use serde::{Deserialize, Serialize};

mod data;
mod html;
mod pdf;
mod view;

#[cfg(test)]
mod tests;

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
    match format {
        Format::Html => html::render(cards),
        Format::Pdf => Ok(pdf::render(cards)),
        Format::Csv => data::csv(cards),
        Format::Json => data::json(cards),
    }
}

/// The printed sheet, shared by the HTML and the PDF so both cut the same way. In
/// millimetres: A4, a margin most printers can reach, and a gap between cards so each
/// card has a border of its own to cut along.
pub(crate) mod sheet {
    pub const PAGE_WIDTH: f32 = 210.0;
    pub const PAGE_HEIGHT: f32 = 297.0;
    pub const MARGIN: f32 = 6.0;
    pub const GAP: f32 = 3.0;
    pub const COLUMNS: usize = 2;
    pub const ROWS: usize = 4;
    pub const CARDS_PER_PAGE: usize = COLUMNS * ROWS;
    /// 97.5 mm.
    pub const CARD_WIDTH: f32 =
        (PAGE_WIDTH - 2.0 * MARGIN - (COLUMNS as f32 - 1.0) * GAP) / COLUMNS as f32;
    /// 69 mm.
    pub const CARD_HEIGHT: f32 =
        (PAGE_HEIGHT - 2.0 * MARGIN - (ROWS as f32 - 1.0) * GAP) / ROWS as f32;
    /// Inside the border.
    pub const PADDING: f32 = 3.0;
    /// The border's colour, a blue used nowhere else on a card, so a scan or a
    /// screenshot finds the cards by it.
    pub const BORDER_RGB: (u8, u8, u8) = (0x15, 0x65, 0xc0);
}
