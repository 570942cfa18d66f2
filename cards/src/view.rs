//! What a printed card shows, decided once for the HTML and the PDF.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::{Card, CardNode};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CardView {
    pub workshop: String,
    pub student: String,
    pub cluster: String,
    pub nodes: Vec<CardNode>,
    /// What the student types first; none while the cluster has no node.
    pub ssh: Option<String>,
    /// The password, or the key file in key mode (both if a card has both).
    pub credentials: Vec<Field>,
    pub expires: Option<String>,
    /// One printed line each: a command given with line breaks spans several.
    pub commands: Vec<String>,
    /// How tightly the card is set: a card with many nodes or commands is printed
    /// smaller so that it still fits.
    pub density: Density,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Density {
    Normal,
    Dense,
    Denser,
}

impl Density {
    /// From the count of node rows and command lines, the two parts that grow.
    fn for_lines(lines: usize) -> Density {
        match lines {
            0..=8 => Density::Normal,
            9..=11 => Density::Dense,
            _ => Density::Denser,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Field {
    pub label: &'static str,
    pub value: String,
}

impl CardView {
    pub fn of(card: &Card) -> Self {
        let mut credentials = Vec::new();
        if let Some(password) = &card.password {
            credentials.push(Field {
                label: "Password",
                value: password.clone(),
            });
        }
        if let Some(key) = &card.key_file {
            credentials.push(Field {
                label: "Key file",
                value: key.clone(),
            });
        }
        let commands: Vec<String> = card
            .commands
            .iter()
            .flat_map(|c| c.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        CardView {
            workshop: card.workshop.clone(),
            student: card.student.clone(),
            cluster: card.cluster.clone(),
            nodes: card.nodes.clone(),
            ssh: entry_node(&card.nodes)
                .map(|node| ssh_command(&card.login, node, card.key_file.as_deref())),
            credentials,
            expires: card.expires.as_deref().map(expiry_for_people),
            density: Density::for_lines(card.nodes.len() + commands.len()),
            commands,
        }
    }
}

/// The node a student logs in to first: a manager, so `docker node ls` works there.
pub(crate) fn entry_node(nodes: &[CardNode]) -> Option<&CardNode> {
    nodes
        .iter()
        .find(|n| n.role == "manager")
        .or_else(|| nodes.first())
}

/// `ssh [-i KEY] LOGIN@ADDRESS [-p PORT]`, the port only when it is not ssh's own.
pub(crate) fn ssh_command(login: &str, node: &CardNode, key_file: Option<&str>) -> String {
    let mut command = String::from("ssh ");
    if let Some(key) = key_file {
        command.push_str("-i ");
        command.push_str(&shell_word(key));
        command.push(' ');
    }
    command.push_str(&shell_word(&format!("{login}@{}", node.address)));
    if node.port != 22 {
        command.push_str(&format!(" -p {}", node.port));
    }
    command
}

/// `ADDRESS:PORT`, with an IPv6 address in brackets so the port stays readable.
pub(crate) fn endpoint(node: &CardNode) -> String {
    if node.address.contains(':') {
        format!("[{}]:{}", node.address, node.port)
    } else {
        format!("{}:{}", node.address, node.port)
    }
}

/// A word a student can paste into a shell as it is printed: quoted only when it has to be.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-~".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `2026-12-06 08:00 UTC` from RFC 3339; anything else is printed as it came.
pub(crate) fn expiry_for_people(expires: &str) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    OffsetDateTime::parse(expires, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(UtcOffset::UTC).format(&format).ok())
        .unwrap_or_else(|| expires.to_owned())
}

/// `s` in at most `chars` characters, an ellipsis showing where it was cut.
pub(crate) fn fit(s: &str, chars: usize) -> String {
    if s.chars().count() <= chars {
        return s.to_owned();
    }
    if chars == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(chars - 1).collect();
    out.push('…');
    out
}

/// `s` in at most `chars` characters, its middle replaced by an ellipsis if need be.
pub(crate) fn fit_middle(s: &str, chars: usize) -> String {
    let count = s.chars().count();
    if count <= chars || chars < 3 {
        return fit(s, chars);
    }
    let head = (chars - 1) / 2;
    let tail = chars - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(count - tail));
    out
}
