//! CSV and JSON: the cards as data, for mail merges and scripts.

use crate::view::{endpoint, entry_node, ssh_command};
use crate::{Card, CardsError};

const CSV_HEADER: [&str; 9] = [
    "workshop", "student", "cluster", "login", "password", "key_file", "expires", "ssh", "nodes",
];

/// One row per student. The nodes are `name=address:port` separated by spaces; the
/// commands are the course's, the same on every card, so they are left to the JSON.
pub(crate) fn csv(cards: &[Card]) -> Result<Vec<u8>, CardsError> {
    let failed = |e: csv::Error| CardsError::Render {
        format: "csv",
        reason: e.to_string(),
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER).map_err(failed)?;
    for card in cards {
        let ssh = entry_node(&card.nodes)
            .map(|node| ssh_command(&card.login, node, card.key_file.as_deref()))
            .unwrap_or_default();
        let nodes = card
            .nodes
            .iter()
            .map(|node| format!("{}={}", node.name, endpoint(node)))
            .collect::<Vec<_>>()
            .join(" ");
        out.write_record([
            card.workshop.as_str(),
            &card.student,
            &card.cluster,
            &card.login,
            card.password.as_deref().unwrap_or(""),
            card.key_file.as_deref().unwrap_or(""),
            card.expires.as_deref().unwrap_or(""),
            &ssh,
            &nodes,
        ])
        .map_err(failed)?;
    }
    out.into_inner().map_err(|e| CardsError::Render {
        format: "csv",
        reason: e.error().to_string(),
    })
}

/// The cards as serde writes them, indented, with a final newline.
pub(crate) fn json(cards: &[Card]) -> Result<Vec<u8>, CardsError> {
    let mut out = serde_json::to_vec_pretty(cards).map_err(|e| CardsError::Render {
        format: "json",
        reason: e.to_string(),
    })?;
    out.push(b'\n');
    Ok(out)
}
