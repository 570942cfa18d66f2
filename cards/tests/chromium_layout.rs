//! The printed cards as a teacher sees them: headless Chromium takes a screenshot of the
//! HTML at A4 size (794 x 1123 px at 96 dpi), and the cards are found in it by their
//! border colour: two columns by four rows of equal cards that fit the page, each with
//! text inside. When poppler's `pdftoppm` is installed, Chromium's print of nine cards and
//! swarmup's own PDF are checked the same way, page by page.
//!
//! Needs SWARMUP_E2E=1 and `chromium` (Debian's package); without SWARMUP_E2E it prints
//! `skipped: …`. The pictures are left in `target/test-output/` to look at.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swarmup_cards::{render, Card, CardNode, Format};

const A4_WIDTH_PX: u32 = 794;
const A4_HEIGHT_PX: u32 = 1123;
/// The cards' border colour (`sheet::BORDER_RGB` in the crate).
const BORDER: (i32, i32, i32) = (0x15, 0x65, 0xc0);

fn e2e_enabled(test: &str, needs: &str) -> bool {
    if std::env::var("SWARMUP_E2E").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: {test} needs SWARMUP_E2E=1 and {needs}");
        false
    }
}

fn workshop(students: usize) -> Vec<Card> {
    (1..=students)
        .map(|i| {
            let cluster = format!("docker-101-s{i:02}");
            // Half the students as on a lab host (one address, a port per node), half
            // as on droplets (an address per node, port 22).
            let lab = i % 2 == 0;
            let nodes = (1..=3)
                .map(|n| CardNode {
                    name: format!("{cluster}-node{n}"),
                    address: if lab {
                        "192.0.2.7".into()
                    } else {
                        format!("203.0.113.{}", i * 10 + n)
                    },
                    port: if lab { 2200 + (i * 10 + n) as u16 } else { 22 },
                    role: if n == 1 { "manager" } else { "worker" }.into(),
                })
                .collect();
            Card {
                workshop: "docker-101".into(),
                student: format!("s{i:02}"),
                cluster,
                nodes,
                login: "student".into(),
                password: Some(format!("otter-maple-{i}")),
                key_file: None,
                expires: Some("2026-12-06T08:00:00Z".into()),
                commands: vec![
                    "docker node ls".into(),
                    "docker service create --name web -p 8080:80 nginx".into(),
                    "docker service ps web".into(),
                    "curl localhost:8080".into(),
                ],
            }
        })
        .collect()
}

/// Cards that push every limit: long names, IPv6 addresses, key files, many lines.
fn awkward(students: usize) -> Vec<Card> {
    let mut cards = workshop(students);
    for (i, card) in cards.iter_mut().enumerate() {
        card.workshop = "introduction-to-container-orchestration-<autumn & winter>".into();
        card.cluster = format!("{}-s{:02}", card.workshop, i + 1);
        card.nodes = (1..=5)
            .map(|n| CardNode {
                name: format!("{}-node{n}", card.cluster),
                address: format!("2001:db8:1234:5678:9abc:def0:{i:x}:{n:x}"),
                port: 22,
                role: if n <= 3 { "manager" } else { "worker" }.into(),
            })
            .collect();
        if i % 2 == 0 {
            card.password = None;
            card.key_file = Some(format!("keys/{}/s{:02}.key", card.workshop, i + 1));
        }
        card.commands.extend([
            "docker service update --replicas 5 --update-parallelism 2 web".into(),
            "docker stack deploy -c stack.yml demo".into(),
            "docker service logs -f demo_web".into(),
        ]);
    }
    cards
}

#[test]
fn chromium_prints_eight_cards_per_a4_page() {
    if !e2e_enabled("chromium_prints_eight_cards_per_a4_page", "chromium") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = test_output_dir();

    let html = dir.path().join("cards.html");
    fs::write(&html, render(&workshop(8), Format::Html).unwrap()).unwrap();
    let screenshot = dir.path().join("cards.png");
    chromium(
        dir.path(),
        &[
            format!("--window-size={A4_WIDTH_PX},{A4_HEIGHT_PX}"),
            "--hide-scrollbars".into(),
            format!("--screenshot={}", screenshot.display()),
        ],
        &html,
        &screenshot,
    );
    let kept = out.join("cards-a4.png");
    fs::copy(&screenshot, &kept).unwrap();
    println!("screenshot: {}", kept.display());
    let image = Image::read(&screenshot);
    assert_eq!(
        (image.width, image.height),
        (A4_WIDTH_PX, A4_HEIGHT_PX),
        "the screenshot is one A4 page"
    );
    check_page(&image, 8, "the screenshot");

    // Long names, IPv6, keys, five nodes and many commands: smaller type, wrapped
    // values, but the grid holds.
    let html = dir.path().join("long.html");
    fs::write(&html, render(&awkward(8), Format::Html).unwrap()).unwrap();
    let screenshot = dir.path().join("long.png");
    chromium(
        dir.path(),
        &[
            format!("--window-size={A4_WIDTH_PX},{A4_HEIGHT_PX}"),
            "--hide-scrollbars".into(),
            format!("--screenshot={}", screenshot.display()),
        ],
        &html,
        &screenshot,
    );
    let kept = out.join("cards-a4-long.png");
    fs::copy(&screenshot, &kept).unwrap();
    println!("screenshot: {}", kept.display());
    check_page(&Image::read(&screenshot), 8, "the screenshot of long cards");

    if !have("pdftoppm") {
        println!("skipped: the printed pages need pdftoppm (poppler-utils)");
        return;
    }
    // What the teacher's printer gets: the @page size, the page breaks, nine cards on two pages.
    let html9 = dir.path().join("cards9.html");
    fs::write(&html9, render(&workshop(9), Format::Html).unwrap()).unwrap();
    let printed = dir.path().join("printed.pdf");
    chromium(
        dir.path(),
        &[
            "--no-pdf-header-footer".into(),
            format!("--print-to-pdf={}", printed.display()),
        ],
        &html9,
        &printed,
    );
    let pages = rasterise(&printed, dir.path(), "printed");
    assert_eq!(pages.len(), 2, "Chromium printed nine cards on two pages");
    fs::copy(&pages[0], out.join("cards-a4-printed-p1.png")).unwrap();
    check_page(&Image::read(&pages[0]), 8, "page 1 of Chromium's print");
    check_page(&Image::read(&pages[1]), 1, "page 2 of Chromium's print");
}

#[test]
fn pdf_pages_hold_the_same_grid() {
    if !e2e_enabled("pdf_pages_hold_the_same_grid", "pdftoppm") {
        return;
    }
    if !have("pdftoppm") {
        println!("skipped: pdf_pages_hold_the_same_grid needs pdftoppm (poppler-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("cards.pdf");
    fs::write(&pdf, render(&workshop(9), Format::Pdf).unwrap()).unwrap();
    let pages = rasterise(&pdf, dir.path(), "cards");
    assert_eq!(pages.len(), 2, "nine cards make two PDF pages");
    let kept = test_output_dir().join("cards-pdf-p1.png");
    fs::copy(&pages[0], &kept).unwrap();
    println!("pdf page: {}", kept.display());
    check_page(&Image::read(&pages[0]), 8, "page 1 of the PDF");
    check_page(&Image::read(&pages[1]), 1, "page 2 of the PDF");
}

/// Runs headless Chromium on `html` until it exits (with a deadline) and `expect` exists.
fn chromium(work: &Path, args: &[String], html: &Path, expect: &Path) {
    assert!(
        have("chromium"),
        "chromium is not installed (scripts/test-all installs Debian's package)"
    );
    let profile = tempfile::tempdir_in(work).unwrap();
    let log = work.join("chromium.log");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(work.join("chromium.err")).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = fs::read_to_string(work.join("chromium.err")).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}): {err}");
    assert!(
        expect.exists(),
        "chromium wrote no {}: {err}",
        expect.display()
    );
}

/// The PDF's pages as PNGs at 96 dpi, in order.
fn rasterise(pdf: &Path, dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let root = dir.join(prefix);
    let status = Command::new("pdftoppm")
        .args(["-r", "96", "-png"])
        .arg(pdf)
        .arg(&root)
        .status()
        .expect("run pdftoppm");
    assert!(status.success(), "pdftoppm failed on {}", pdf.display());
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{prefix}-")) && name.ends_with(".png")
        })
        .collect();
    pages.sort();
    pages
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `target/test-output`: CARGO_TARGET_DIR when set, else the target directory this test
/// binary was built in (`target/debug/deps/…`).
fn test_output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().to_path_buf()
        });
    let dir = target.join("test-output");
    fs::create_dir_all(&dir).unwrap();
    dir
}

struct Image {
    width: u32,
    height: u32,
    /// RGB, row by row.
    pixels: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let mut decoder = png::Decoder::new(BufReader::new(fs::File::open(path).unwrap()));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        let mut pixels = Vec::with_capacity((info.width * info.height) as usize);
        for y in 0..info.height as usize {
            let row = &buf[y * info.line_size..][..info.width as usize * channels];
            for px in row.chunks(channels) {
                pixels.push(match channels {
                    1 | 2 => [px[0]; 3],
                    _ => [px[0], px[1], px[2]],
                });
            }
        }
        Image {
            width: info.width,
            height: info.height,
            pixels,
        }
    }

    fn at(&self, x: u32, y: u32) -> [u8; 3] {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// The border blue, or a blend of it with white as anti-aliasing leaves at the edges.
fn is_border(p: [u8; 3]) -> bool {
    let [r, g, b] = p.map(i32::from);
    let blue_over_red = (BORDER.2 - BORDER.0) as f32;
    // How much of the border colour this pixel holds, judged by how much bluer than red
    // it is; black text and grey rules have none.
    let share = (b - r) as f32 / blue_over_red;
    share > 0.4 && (g - r) as f32 > 0.5 * share * (BORDER.1 - BORDER.0) as f32
}

fn is_ink(p: [u8; 3]) -> bool {
    p.iter().all(|&c| c < 140)
}

#[derive(Debug, Clone, Copy)]
struct Box {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Box {
    fn width(&self) -> u32 {
        self.x1 - self.x0 + 1
    }
    fn height(&self) -> u32 {
        self.y1 - self.y0 + 1
    }
}

/// The bounding boxes of the connected areas of border colour big enough to be a card.
fn card_boxes(image: &Image) -> Vec<Box> {
    let (w, h) = (image.width, image.height);
    let mut seen = vec![false; (w * h) as usize];
    let mut boxes = Vec::new();
    for start in 0..w * h {
        if seen[start as usize] || !is_border(image.pixels[start as usize]) {
            continue;
        }
        let mut b = Box {
            x0: start % w,
            y0: start / w,
            x1: start % w,
            y1: start / w,
        };
        let mut stack = vec![start];
        seen[start as usize] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            b.x0 = b.x0.min(x);
            b.x1 = b.x1.max(x);
            b.y0 = b.y0.min(y);
            b.y1 = b.y1.max(y);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = (ny as u32 * w + nx as u32) as usize;
                    if !seen[j] && is_border(image.pixels[j]) {
                        seen[j] = true;
                        stack.push(j as u32);
                    }
                }
            }
        }
        if b.width() > 100 && b.height() > 100 {
            boxes.push(b);
        }
    }
    boxes
}

/// `cards` cards in the 2 x 4 grid, filled row by row from the top left: equal in size,
/// inside the page, not overlapping, each with text in it.
fn check_page(image: &Image, cards: usize, what: &str) {
    let mut boxes = card_boxes(image);
    assert_eq!(boxes.len(), cards, "{what}: cards found: {boxes:?}");
    boxes.sort_by_key(|b| (b.y0, b.x0));

    let (w, h) = (image.width, image.height);
    let first = boxes[0];
    // About 97.5 x 69 mm: a little under half the width and a quarter of the height.
    let (fw, fh) = (
        first.width() as f32 / w as f32,
        first.height() as f32 / h as f32,
    );
    assert!(
        (0.44..0.5).contains(&fw),
        "{what}: card width {fw} of the page"
    );
    assert!(
        (0.22..0.25).contains(&fh),
        "{what}: card height {fh} of the page"
    );

    let near = |a: u32, b: u32| a.abs_diff(b) <= 3;
    for (i, b) in boxes.iter().enumerate() {
        assert!(
            near(b.width(), first.width()) && near(b.height(), first.height()),
            "{what}: card {i} is {}x{}, card 0 {}x{}",
            b.width(),
            b.height(),
            first.width(),
            first.height()
        );
        // Inside the page, clear of its edges where printers cannot print.
        assert!(
            b.x0 >= 10 && b.y0 >= 10 && b.x1 + 10 < w && b.y1 + 10 < h,
            "{what}: card {i} {b:?} is not within the page's margins"
        );
        let (column, row) = (i % 2, i / 2);
        let left = first.x0 + column as u32 * (w - 2 * first.x0 - first.width());
        assert!(
            near(b.x0, left),
            "{what}: card {i} is not in column {column}: {b:?}"
        );
        if column == 1 {
            assert!(
                near(b.y0, boxes[i - 1].y0),
                "{what}: card {i} not level with {}",
                i - 1
            );
            assert!(
                b.x0 > boxes[i - 1].x1,
                "{what}: card {i} overlaps card {}",
                i - 1
            );
        } else if row > 0 {
            assert!(
                b.y0 > boxes[i - 2].y1,
                "{what}: card {i} overlaps the row above"
            );
        }
        let ink = (b.y0 + 8..b.y1 - 8)
            .flat_map(|y| (b.x0 + 8..b.x1 - 8).map(move |x| (x, y)))
            .filter(|&(x, y)| is_ink(image.at(x, y)))
            .count();
        assert!(
            ink > 1500,
            "{what}: card {i} has almost no text ({ink} dark pixels)"
        );
    }
    if cards == 8 {
        let rows: Vec<u32> = boxes.iter().step_by(2).map(|b| b.y0).collect();
        let pitch = rows[1] - rows[0];
        for pair in rows.windows(2) {
            assert!(
                near(pair[1] - pair[0], pitch),
                "{what}: rows unevenly spaced: {rows:?}"
            );
        }
        println!(
            "{what}: 2 columns x 4 rows of {}x{} px cards",
            first.width(),
            first.height()
        );
    }
}
