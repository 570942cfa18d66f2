use crate::pdf::{win_ansi, wrap};
use crate::view::{expiry_for_people, fit, fit_middle, ssh_command, CardView, Density};
use crate::{render, Card, CardNode, CardsError, Format};

fn node(name: &str, address: &str, port: u16, role: &str) -> CardNode {
    CardNode {
        name: name.into(),
        address: address.into(),
        port,
        role: role.into(),
    }
}

fn card(i: usize) -> Card {
    Card {
        workshop: "docker-101".into(),
        student: format!("s{i:02}"),
        cluster: format!("docker-101-s{i:02}"),
        nodes: vec![
            node(
                &format!("docker-101-s{i:02}-node1"),
                "203.0.113.10",
                22,
                "manager",
            ),
            node(
                &format!("docker-101-s{i:02}-node2"),
                "203.0.113.11",
                22,
                "worker",
            ),
        ],
        login: "student".into(),
        password: Some("otter-maple-river".into()),
        key_file: None,
        expires: Some("2026-12-06T08:00:00Z".into()),
        commands: vec!["docker node ls".into(), "docker service ls".into()],
    }
}

fn cards(n: usize) -> Vec<Card> {
    (1..=n).map(card).collect()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn no_cards_is_an_error_in_every_format() {
    for format in [Format::Html, Format::Pdf, Format::Csv, Format::Json] {
        assert!(matches!(render(&[], format), Err(CardsError::Empty)));
    }
}

#[test]
fn html_escapes_what_users_named() {
    let mut c = card(1);
    c.workshop = "<script>alert('x')</script>".into();
    c.nodes[0].name = "n1\" onmouseover=\"x".into();
    c.password = Some("a&b<c>".into());
    c.commands = vec!["echo '<b>' && docker ps".into()];
    let html = text(render(&[c], Format::Html).unwrap());
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;"));
    assert!(!html.contains("n1\" onmouseover"));
    assert!(html.contains("a&amp;b&lt;c&gt;"));
    assert!(html.contains("&lt;b&gt;"));
    assert!(!html.contains("<b>"));
}

#[test]
fn html_card_shows_nodes_login_expiry_and_commands() {
    let mut c = card(3);
    c.nodes[1].port = 2222;
    let html = text(render(&[c], Format::Html).unwrap());
    for expected in [
        "docker-101",
        "s03",
        "docker-101-s03",
        "docker-101-s03-node1",
        "203.0.113.11",
        "2222",
        "manager",
        "worker",
        "ssh student@203.0.113.10</p>",
        "otter-maple-river",
        "2026-12-06 08:00 UTC",
        "docker node ls",
        "docker service ls",
        "size: A4",
    ] {
        assert!(html.contains(expected), "missing {expected:?}");
    }
    // Self-contained: nothing is fetched when the page opens.
    for external in ["http://", "https://", "<link", "src="] {
        assert!(!html.contains(external), "{external}");
    }
}

#[test]
fn nine_cards_make_two_pages() {
    let html = text(render(&cards(9), Format::Html).unwrap());
    assert_eq!(html.matches("<section class=\"page\">").count(), 2);
    assert_eq!(html.matches("<article class=\"card").count(), 9);
    let eight = text(render(&cards(8), Format::Html).unwrap());
    assert_eq!(eight.matches("<section class=\"page\">").count(), 1);

    let pdf = render(&cards(9), Format::Pdf).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let pdf = String::from_utf8_lossy(&pdf);
    assert_eq!(
        pdf.matches("/Type /Page\n").count() + pdf.matches("/Type /Page ").count(),
        2
    );
    assert!(pdf.contains("/Count 2"));
    // Nine card borders, drawn as rectangles.
    assert_eq!(
        pdf.matches(" re\n").count() - pdf.matches("0.93 g").count(),
        9
    );
}

#[test]
fn pdf_uses_standard_fonts_and_shows_the_content() {
    let mut c = card(1);
    c.nodes[0].port = 2201;
    let pdf = render(&[c], Format::Pdf).unwrap();
    let pdf = String::from_utf8_lossy(&pdf);
    assert!(pdf.contains("/BaseFont /Courier"));
    assert!(pdf.contains("/Encoding /WinAnsiEncoding"));
    assert!(!pdf.contains("/FontFile"), "no embedded font");
    for expected in [
        "(docker-101)",
        "(s01)",
        "(ssh student@203.0.113.10 -p 2201)",
        "(otter-maple-river)",
        "(2026-12-06 08:00 UTC)",
        "(docker service ls)",
        "docker-101-s01-node2  203.0.113.11  22    worker",
    ] {
        assert!(pdf.contains(expected), "missing {expected:?}");
    }
    assert!(pdf.trim_end().ends_with("%%EOF"));
}

#[test]
fn pdf_cuts_long_lines_and_too_many_lines() {
    let mut c = card(1);
    c.commands = vec![format!("echo {}", "x".repeat(200))];
    c.commands.extend((0..40).map(|i| format!("echo {i}")));
    let pdf = render(&[c], Format::Pdf).unwrap();
    let pdf = String::from_utf8_lossy(&pdf);
    // A cut line is no longer ASCII: pdf-writer writes it in hex, `x` as 78 and the
    // ellipsis (WinAnsi 0x85) last.
    let cut = format!("{}85>", "78".repeat(40));
    assert!(pdf.contains(&cut), "{pdf}");
    assert!(!pdf.contains(&"78".repeat(80)));
    assert!(pdf.contains("(echo 1)"));
    assert!(!pdf.contains("(echo 39)"));
    assert!(
        pdf.contains("<85>"),
        "the lines that did not fit are marked"
    );
}

#[test]
fn pdf_wraps_a_long_password_on_three_lines_at_most() {
    let mut c = card(1);
    c.password = Some("x".repeat(500));
    let pdf = render(&[c], Format::Pdf).unwrap();
    let pdf = String::from_utf8_lossy(&pdf);
    let full_lines = pdf.lines().filter(|l| l.starts_with("(xxxx")).count();
    assert_eq!(full_lines, 2, "{pdf}");
    assert!(pdf.contains(&format!("{}85>", "78".repeat(20))));
}

#[test]
fn fit_and_win_ansi() {
    assert_eq!(fit("abcdef", 6), "abcdef");
    assert_eq!(fit("abcdefg", 6), "abcde…");
    assert_eq!(fit("héllo", 3), "hé…");
    assert_eq!(fit_middle("workshop-s01-node1", 18), "workshop-s01-node1");
    assert_eq!(fit_middle("workshop-s01-node1", 11), "works…node1");
    assert_eq!(win_ansi("a(é)…\t✓"), b"a(\xe9)\x85 ?");
}

#[test]
fn wrap_breaks_at_spaces_then_anywhere_and_marks_a_cut() {
    assert_eq!(wrap("short", 10, 3), ["short"]);
    assert_eq!(wrap("", 10, 3), [""]);
    assert_eq!(
        wrap("ssh -i keys/s01.key student@203.0.113.10 -p 2201", 20, 3),
        ["ssh -i keys/s01.key", "student@203.0.113.10", "-p 2201"]
    );
    assert_eq!(wrap("abcdefghij", 4, 3), ["abcd", "efgh", "ij"]);
    assert_eq!(wrap("abcdefghijklmnop", 4, 3), ["abcd", "efgh", "ijk…"]);
}

#[test]
fn pdf_wraps_what_must_be_typed_instead_of_cutting_it() {
    let mut c = card(1);
    c.password = None;
    c.key_file = Some(format!("keys/{}/s01.key", "k".repeat(60)));
    let pdf = render(&[c], Format::Pdf).unwrap();
    let pdf = String::from_utf8_lossy(&pdf);
    // The address is on the card even though the key's path fills a line.
    assert!(pdf.contains("s01.key student@203.0.113.10)"), "{pdf}");
    assert!(pdf.contains("s01.key)"));
}

#[test]
fn ssh_command_names_the_port_and_key_only_when_needed() {
    let n = node("w-s01-node1", "203.0.113.10", 22, "manager");
    assert_eq!(ssh_command("student", &n, None), "ssh student@203.0.113.10");
    let n = node("w-s01-node1", "127.0.0.1", 2201, "manager");
    assert_eq!(
        ssh_command("student", &n, Some("keys/s01 key")),
        "ssh -i 'keys/s01 key' student@127.0.0.1 -p 2201"
    );
}

#[test]
fn the_card_points_at_a_manager_and_prints_the_expiry_for_people() {
    let mut c = card(1);
    c.nodes.swap(0, 1);
    c.key_file = Some("s01.key".into());
    c.password = None;
    c.expires = Some("2026-12-06T09:30:00+01:00".into());
    let view = CardView::of(&c);
    assert_eq!(
        view.ssh.as_deref(),
        Some("ssh -i s01.key student@203.0.113.10")
    );
    assert_eq!(view.credentials.len(), 1);
    assert_eq!(view.credentials[0].label, "Key file");
    assert_eq!(view.expires.as_deref(), Some("2026-12-06 08:30 UTC"));
    assert_eq!(expiry_for_people("tomorrow"), "tomorrow");
}

#[test]
fn csv_has_a_header_a_row_per_student_and_quotes() {
    let mut c = card(2);
    c.password = Some("pa,ss\"word".into());
    c.nodes.push(node("v6", "2001:db8::1", 2200, "worker"));
    let out = text(render(&[card(1), c], Format::Csv).unwrap());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "workshop,student,cluster,login,password,key_file,expires,ssh,nodes"
    );
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[2],
        "docker-101,s02,docker-101-s02,student,\"pa,ss\"\"word\",,2026-12-06T08:00:00Z,\
         ssh student@203.0.113.10,\
         docker-101-s02-node1=203.0.113.10:22 docker-101-s02-node2=203.0.113.11:22 \
         v6=[2001:db8::1]:2200"
    );
}

#[test]
fn json_round_trips() {
    let mut input = cards(3);
    input[1].password = None;
    input[1].key_file = Some("s02.key".into());
    input[2].expires = None;
    let out = render(&input, Format::Json).unwrap();
    assert!(out.ends_with(b"\n"));
    assert!(text(out.clone()).contains("\n  {\n    \"workshop\": \"docker-101\""));
    let back: Vec<Card> = serde_json::from_slice(&out).unwrap();
    assert_eq!(back, input);
}

#[test]
fn many_nodes_and_commands_print_smaller() {
    let mut c = card(1);
    assert_eq!(CardView::of(&c).density, Density::Normal);
    c.commands = (0..8).map(|i| format!("step {i}")).collect();
    assert_eq!(CardView::of(&c).density, Density::Dense);
    let html = text(render(&[c.clone()], Format::Html).unwrap());
    assert!(html.contains("class=\"card dense\""));
    c.commands = (0..10).map(|i| format!("step {i}")).collect();
    assert_eq!(CardView::of(&c).density, Density::Denser);
}
