//! The printable page: one self-contained HTML file (inline CSS, nothing fetched).
//!
//! A minijinja template rather than Rust string building: the page is mostly markup and
//! CSS, which stay readable as a template, and the `.html` template escapes every value
//! it prints by default, so a workshop or node name cannot slip markup into the page.

use minijinja::{context, Environment};

use crate::sheet;
use crate::view::{fit_middle, CardView, Density};
use crate::{Card, CardsError};

const TEMPLATE: &str = include_str!("cards.html");

pub(crate) fn render(cards: &[Card]) -> Result<Vec<u8>, CardsError> {
    let failed = |e: minijinja::Error| CardsError::Render {
        format: "html",
        reason: e.to_string(),
    };
    let mut env = Environment::new();
    // The name's `.html` turns on HTML escaping of everything the template prints.
    env.add_template("cards.html", TEMPLATE).map_err(failed)?;
    let views: Vec<CardView> = cards.iter().map(CardView::of).map(short_names).collect();
    let pages: Vec<&[CardView]> = views.chunks(sheet::CARDS_PER_PAGE).collect();
    let (r, g, b) = sheet::BORDER_RGB;
    let page = env
        .get_template("cards.html")
        .map_err(failed)?
        .render(context! {
            title => format!("{}: student cards", cards[0].workshop),
            pages => pages,
            sheet => context! {
                page_width => sheet::PAGE_WIDTH,
                page_height => sheet::PAGE_HEIGHT,
                margin => sheet::MARGIN,
                gap => sheet::GAP,
                columns => sheet::COLUMNS,
                rows => sheet::ROWS,
                padding => sheet::PADDING,
                border => format!("#{r:02x}{g:02x}{b:02x}"),
            },
        })
        .map_err(failed)?;
    Ok(page.into_bytes())
}

/// Node names cut in the middle to one line of their column, as in the PDF: they share
/// their start (the cluster's name, printed in full above the table) and differ at the end.
/// Addresses are not cut; they wrap.
fn short_names(mut view: CardView) -> CardView {
    // The name column is 38% of the card's inner width: about 21, 24 and 29 monospace
    // characters of 0.6 em at the three sizes, less one for fonts that run wider.
    let chars = match view.density {
        Density::Normal => 20,
        Density::Dense => 23,
        Density::Denser => 27,
    };
    for node in &mut view.nodes {
        node.name = fit_middle(&node.name, chars);
    }
    view
}
