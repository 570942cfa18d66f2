//! The same sheet as the HTML, written directly as PDF with `pdf-writer`.
//!
//! Text uses the PDF's standard Courier and Helvetica, which every reader has, so no font
//! is embedded. Courier's glyphs are all 0.6 em wide: a line's width is its length, so
//! over-long values are cut (or, for what students type, wrapped) to the card exactly.
//! Nodes are cut in the middle, where their names are alike. Helvetica is only used for the fixed
//! labels, whose widths are known to fit.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::sheet;
use crate::view::{fit, fit_middle, CardView, Density};
use crate::Card;

const PT_PER_MM: f32 = 72.0 / 25.4;
const COURIER_ADVANCE: f32 = 0.6;

const MONO: Name<'static> = Name(b"F1");
const MONO_BOLD: Name<'static> = Name(b"F2");
const LABEL: Name<'static> = Name(b"F3");

const TITLE_SIZE: f32 = 10.0;
const NORMAL_SIZE: f32 = 7.5;
const DENSE_SIZE: f32 = 6.5;
const DENSER_SIZE: f32 = 5.5;
/// A password, a key file or the ssh command wraps rather than being cut, up to this
/// many lines.
const WRAPPED_LINES: usize = 3;
/// Where values start after a label.
const LABEL_WIDTH_MM: f32 = 16.0;
const COMMAND_INDENT_MM: f32 = 2.0;
/// A node name cut shorter than this no longer tells the nodes apart.
const MIN_NAME_CHARS: usize = 12;
/// Between the title and the rule under it, in points.
const TITLE_RULE_GAP: f32 = 3.0;
/// Above and below the ssh command's box, in points.
const SSH_GAP: f32 = 1.5;
/// The ssh command inside its box, in points.
const SSH_INDENT: f32 = 3.0;

pub(crate) fn render(cards: &[Card]) -> Vec<u8> {
    let views: Vec<CardView> = cards.iter().map(CardView::of).collect();
    let pages: Vec<&[CardView]> = views.chunks(sheet::CARDS_PER_PAGE).collect();

    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let fonts = [
        (MONO, Ref::new(3), "Courier"),
        (MONO_BOLD, Ref::new(4), "Courier-Bold"),
        (LABEL, Ref::new(5), "Helvetica-Bold"),
    ];
    let info = Ref::new(6);
    let page_ref = |i: usize| Ref::new(7 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(8 + 2 * i as i32);

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages.len()).map(page_ref))
        .count(pages.len() as i32);
    for (_, id, base) in fonts {
        // WinAnsi: the standard fonts' Latin-1 glyphs, see `win_ansi`.
        pdf.type1_font(id)
            .base_font(Name(base.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    pdf.document_info(info)
        .title(TextStr(&format!("{}: student cards", cards[0].workshop)))
        .creator(TextStr("swarmup"));

    let media = Rect::new(
        0.0,
        0.0,
        sheet::PAGE_WIDTH * PT_PER_MM,
        sheet::PAGE_HEIGHT * PT_PER_MM,
    );
    for (i, page_cards) in pages.iter().enumerate() {
        let mut content = Content::new();
        for (slot, view) in page_cards.iter().enumerate() {
            draw_card(&mut content, slot, view);
        }
        let stream = content.finish();
        let mut page = pdf.page(page_ref(i));
        page.parent(tree).media_box(media).contents(content_ref(i));
        let mut resources = page.resources();
        let mut font_dict = resources.fonts();
        for (name, id, _) in fonts {
            font_dict.pair(name, id);
        }
        font_dict.finish();
        resources.finish();
        page.finish();
        pdf.stream(content_ref(i), stream.as_slice());
    }
    pdf.finish()
}

/// One line of a card, top to bottom.
#[derive(Debug, Clone, PartialEq)]
enum Row {
    Title {
        left: String,
        right: String,
    },
    /// A value too long for one line continues under itself.
    Field {
        label: &'static str,
        lines: Vec<String>,
    },
    NodesHead(String),
    NodeLine(String),
    Ssh(Vec<String>),
    Heading(&'static str),
    Command(String),
}

/// The card as rows, every text already cut to fit a card at `size` (titles are cut
/// for their own size when drawn).
fn rows(view: &CardView, size: f32) -> Vec<Row> {
    let chars = courier_chars(inner_width(), size);
    let value_chars = chars.saturating_sub(courier_chars(LABEL_WIDTH_MM * PT_PER_MM, size) + 1);
    let mut rows = vec![
        Row::Title {
            left: view.workshop.clone(),
            right: view.student.clone(),
        },
        Row::Field {
            label: "Cluster",
            lines: vec![fit(&view.cluster, value_chars)],
        },
    ];
    if !view.nodes.is_empty() {
        let widths = node_columns(view, chars);
        let line = |cells: [&str; 4]| {
            let mut out = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                // Node names share their start (the cluster's name): cut their middle.
                let cell = fit_middle(cell, width);
                out.push_str(&cell);
                if i < 3 {
                    let pad = width - cell.chars().count() + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            fit(out.trim_end(), chars)
        };
        rows.push(Row::NodesHead(line(["Node", "Address", "Port", "Role"])));
        for node in &view.nodes {
            rows.push(Row::NodeLine(line([
                &node.name,
                &node.address,
                &node.port.to_string(),
                &node.role,
            ])));
        }
    }
    if let Some(ssh) = &view.ssh {
        let room = courier_chars(inner_width() - 2.0 * SSH_INDENT, size);
        rows.push(Row::Ssh(wrap(ssh, room, WRAPPED_LINES)));
    }
    for field in &view.credentials {
        rows.push(Row::Field {
            label: field.label,
            lines: wrap(&field.value, value_chars, WRAPPED_LINES),
        });
    }
    if let Some(expires) = &view.expires {
        rows.push(Row::Field {
            label: "Expires",
            lines: vec![fit(expires, value_chars)],
        });
    }
    if !view.commands.is_empty() {
        rows.push(Row::Heading("First commands"));
        let command_chars =
            chars.saturating_sub(courier_chars(COMMAND_INDENT_MM * PT_PER_MM, size) + 1);
        for line in &view.commands {
            rows.push(Row::Command(fit(line, command_chars)));
        }
    }
    rows
}

/// Column widths in characters for name, address, port and role: each as wide as its
/// longest entry; when that is too wide the address keeps its width (it is what students
/// type) and the name gets what is left.
fn node_columns(view: &CardView, chars: usize) -> [usize; 4] {
    let longest = |f: &dyn Fn(&crate::CardNode) -> usize, head: usize| {
        view.nodes.iter().map(f).max().unwrap_or(0).max(head)
    };
    let name = longest(&|n| n.name.chars().count(), 4);
    let address = longest(&|n| n.address.chars().count(), 7);
    let port = longest(&|n| n.port.to_string().len(), 4);
    let role = longest(&|n| n.role.chars().count(), 4).min(8);
    let room = chars.saturating_sub(port + role + 6);
    let address = address.min(room.saturating_sub(MIN_NAME_CHARS));
    [name.min(room - address), address, port, role]
}

fn draw_card(content: &mut Content, slot: usize, view: &CardView) {
    let column = (slot % sheet::COLUMNS) as f32;
    let row = (slot / sheet::COLUMNS) as f32;
    let left = (sheet::MARGIN + column * (sheet::CARD_WIDTH + sheet::GAP)) * PT_PER_MM;
    let top =
        (sheet::PAGE_HEIGHT - sheet::MARGIN - row * (sheet::CARD_HEIGHT + sheet::GAP)) * PT_PER_MM;
    let width = sheet::CARD_WIDTH * PT_PER_MM;
    let height = sheet::CARD_HEIGHT * PT_PER_MM;
    let pad = sheet::PADDING * PT_PER_MM;

    let (r, g, b) = sheet::BORDER_RGB;
    content
        .save_state()
        .set_stroke_rgb(
            f32::from(r) / 255.0,
            f32::from(g) / 255.0,
            f32::from(b) / 255.0,
        )
        .set_line_width(0.6 * PT_PER_MM)
        .rect(left, top - height, width, height)
        .stroke()
        .restore_state();

    let inner = inner_width();
    let x = left + pad;
    let bottom = top - height + pad;
    let size = match view.density {
        Density::Normal => NORMAL_SIZE,
        Density::Dense => DENSE_SIZE,
        Density::Denser => DENSER_SIZE,
    };
    let leading = size * 1.3;
    let rows = rows(view, size);
    let mut y = top - pad;
    let all_fit = y - rows.iter().map(|r| row_height(r, leading)).sum::<f32>() >= bottom;
    for row in &rows {
        // What does not fit is cut, and an ellipsis on the last line shows the cut.
        if !all_fit && y - row_height(row, leading) - leading < bottom {
            text(content, MONO, size, x, y - leading, "…");
            break;
        }
        match row {
            Row::Title {
                left: name,
                right: student,
            } => {
                let title_chars = courier_chars(inner, TITLE_SIZE);
                let student = fit(student, title_chars / 2);
                let name_room = title_chars.saturating_sub(student.chars().count() + 2);
                let student_width = student.chars().count() as f32 * TITLE_SIZE * COURIER_ADVANCE;
                y -= TITLE_SIZE;
                text(content, MONO_BOLD, TITLE_SIZE, x, y, &fit(name, name_room));
                text(
                    content,
                    MONO_BOLD,
                    TITLE_SIZE,
                    x + inner - student_width,
                    y,
                    &student,
                );
                y -= TITLE_RULE_GAP;
                rule(content, x, y, inner, 0.6);
                y -= 1.0;
            }
            Row::Field { label, lines } => {
                text(content, LABEL, size - 0.5, x, y - leading, label);
                for line in lines {
                    y -= leading;
                    text(
                        content,
                        MONO_BOLD,
                        size,
                        x + LABEL_WIDTH_MM * PT_PER_MM,
                        y,
                        line,
                    );
                }
            }
            Row::NodesHead(line) => {
                y -= leading;
                text(content, MONO_BOLD, size, x, y, line);
                rule(content, x, y - 2.0, inner, 0.75);
            }
            Row::NodeLine(line) => {
                y -= leading;
                text(content, MONO, size, x, y, line);
            }
            Row::Ssh(lines) => {
                y -= SSH_GAP;
                let box_height = lines.len() as f32 * leading + 1.5;
                content
                    .save_state()
                    .set_fill_gray(0.93)
                    .rect(x, y - box_height, inner, box_height)
                    .fill_nonzero()
                    .restore_state();
                for line in lines {
                    y -= leading;
                    text(content, MONO_BOLD, size, x + SSH_INDENT, y, line);
                }
                y -= 1.5 + SSH_GAP;
            }
            Row::Heading(label) => {
                y -= leading;
                text(content, LABEL, size - 0.5, x, y, label);
            }
            Row::Command(line) => {
                y -= leading;
                text(
                    content,
                    MONO,
                    size,
                    x + COMMAND_INDENT_MM * PT_PER_MM,
                    y,
                    line,
                );
            }
        }
    }
}

fn text(content: &mut Content, font: Name<'_>, size: f32, x: f32, y: f32, s: &str) {
    let bytes = win_ansi(s);
    content
        .begin_text()
        .set_font(font, size)
        .next_line(x, y)
        .show(Str(&bytes))
        .end_text();
}

fn rule(content: &mut Content, x: f32, y: f32, width: f32, gray: f32) {
    content
        .save_state()
        .set_stroke_gray(gray)
        .set_line_width(0.5)
        .move_to(x, y)
        .line_to(x + width, y)
        .stroke()
        .restore_state();
}

/// How many Courier characters of `size` fit in `width` points.
fn courier_chars(width: f32, size: f32) -> usize {
    (width / (size * COURIER_ADVANCE)).floor() as usize
}

/// A card's width inside its padding, in points.
fn inner_width() -> f32 {
    (sheet::CARD_WIDTH - 2.0 * sheet::PADDING) * PT_PER_MM
}

/// The height a row takes, in points; `draw_card` moves down by exactly this much.
fn row_height(row: &Row, leading: f32) -> f32 {
    match row {
        Row::Title { .. } => TITLE_SIZE + TITLE_RULE_GAP + 1.0,
        Row::Ssh(lines) => SSH_GAP + lines.len() as f32 * leading + 1.5 + SSH_GAP,
        Row::Field { lines, .. } => lines.len() as f32 * leading,
        _ => leading,
    }
}

/// `s` in lines of at most `chars` characters, broken after spaces where it has them and
/// anywhere in a word longer than a line; the last of `max_lines` lines is cut if need be.
pub(crate) fn wrap(s: &str, chars: usize, max_lines: usize) -> Vec<String> {
    let chars = chars.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in s.split_inclusive(' ') {
        if current.chars().count() + word.trim_end().chars().count() > chars && !current.is_empty()
        {
            lines.push(current.trim_end().to_owned());
            current = String::new();
        }
        current.push_str(word);
        while current.trim_end().chars().count() > chars {
            let head: String = current.chars().take(chars).collect();
            current = current.chars().skip(chars).collect();
            lines.push(head);
        }
    }
    if !current.trim_end().is_empty() || lines.is_empty() {
        lines.push(current.trim_end().to_owned());
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines.max(1));
        let last = lines.last_mut().expect("at least one line");
        let kept: String = last.chars().take(chars - 1).collect();
        *last = format!("{kept}…");
    }
    lines
}

/// The bytes of `s` in WinAnsiEncoding, the encoding the standard fonts are given here:
/// Latin-1 and the few typographic marks it adds; anything else prints as `?`, and
/// control characters as spaces.
pub(crate) fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\u{a0}'..='\u{ff}' => c as u32 as u8,
            '€' => 0x80,
            '…' => 0x85,
            '‘' => 0x91,
            '’' => 0x92,
            '“' => 0x93,
            '”' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            c if c.is_control() => b' ',
            _ => b'?',
        })
        .collect()
}
