use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use swarm_state::models::{
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecSecrets,
};

use super::*;

fn b64(text: &str) -> FileData {
    FileData(STANDARD.encode(text))
}

fn secret(id: &str, name: &str, file: &str) -> TaskSpecContainerSpecSecrets {
    TaskSpecContainerSpecSecrets {
        file: Some(TaskSpecContainerSpecFile {
            name: Some(file.into()),
            uid: Some("0".into()),
            gid: Some("0".into()),
            mode: Some(0o444),
        }),
        secret_id: Some(id.into()),
        secret_name: Some(name.into()),
    }
}

fn config(id: &str, name: &str, file: &str) -> TaskSpecContainerSpecConfigs {
    TaskSpecContainerSpecConfigs {
        file: Some(TaskSpecContainerSpecFile1 {
            name: Some(file.into()),
            uid: None,
            gid: None,
            mode: None,
        }),
        runtime: None,
        config_id: Some(id.into()),
        config_name: Some(name.into()),
    }
}

fn task(
    secrets: Vec<TaskSpecContainerSpecSecrets>,
    configs: Vec<TaskSpecContainerSpecConfigs>,
) -> Task {
    Task {
        id: Some("t1".into()),
        spec: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some("busybox".into()),
                secrets: Some(secrets),
                configs: Some(configs),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn data() -> (BTreeMap<String, FileData>, BTreeMap<String, FileData>) {
    (
        BTreeMap::from([
            ("s1".to_string(), b64("hunter2")),
            ("s2".to_string(), b64("other")),
        ]),
        BTreeMap::from([("c1".to_string(), b64("listen 80;\n"))]),
    )
}

#[test]
fn targets_follow_dockers_rules() {
    let (secrets, configs) = data();
    let t = task(
        vec![
            secret("s1", "db_pw", "db_pw"),
            secret("s2", "tls", "/etc/tls/key.pem"),
        ],
        vec![
            config("c1", "nginx", "nginx.conf"),
            config("c1", "nginx", "/etc/nginx/nginx.conf"),
        ],
    );
    let files = task_files(&t, &secrets, &configs).unwrap();
    let targets: Vec<&str> = files.iter().map(|f| f.target.as_str()).collect();
    assert_eq!(
        targets,
        vec![
            "/run/secrets/db_pw",
            "/etc/tls/key.pem",
            "/nginx.conf",
            "/etc/nginx/nginx.conf"
        ]
    );
    assert_eq!(files[0].data, b"hunter2");
    assert_eq!(files[0].name, "db_pw");
    assert_eq!(files[2].data, b"listen 80;\n");
    // Each reference its own file in the store, secrets and configs apart.
    let paths: Vec<PathBuf> = files.iter().map(TaskFile::store_path).collect();
    assert_eq!(
        paths,
        vec![
            PathBuf::from("secrets/0"),
            PathBuf::from("secrets/1"),
            PathBuf::from("configs/0"),
            PathBuf::from("configs/1")
        ]
    );
}

#[test]
fn owners_and_modes_default_as_dockers_and_are_kept_when_given() {
    let (secrets, configs) = data();
    let mut s = secret("s1", "db_pw", "db_pw");
    s.file = Some(TaskSpecContainerSpecFile {
        name: Some("db_pw".into()),
        uid: Some("1000".into()),
        gid: Some("".into()),
        mode: Some(0o400),
    });
    let t = task(vec![s], vec![config("c1", "nginx", "nginx.conf")]);
    let files = task_files(&t, &secrets, &configs).unwrap();
    assert_eq!(
        (files[0].uid, files[0].gid, files[0].mode),
        (1000, 0, 0o400)
    );
    assert_eq!((files[1].uid, files[1].gid, files[1].mode), (0, 0, 0o444));
}

#[test]
fn a_task_without_references_needs_no_files() {
    let (secrets, configs) = data();
    assert!(task_files(&task(vec![], vec![]), &secrets, &configs)
        .unwrap()
        .is_empty());
    assert!(task_files(&Task::default(), &secrets, &configs)
        .unwrap()
        .is_empty());
}

#[test]
fn missing_data_is_refused_by_name() {
    let (secrets, configs) = data();
    let t = task(vec![secret("gone", "db_pw", "db_pw")], vec![]);
    let e = task_files(&t, &secrets, &configs).unwrap_err();
    assert_eq!(
        e,
        FileRefError::NotFound {
            kind: FileKind::Secret,
            name: "db_pw".into(),
            id: "gone".into()
        }
    );
    assert!(e.to_string().starts_with("secret db_pw not found"), "{e}");

    // A config's id is looked up among configs only.
    let t = task(vec![], vec![config("s1", "app", "app.conf")]);
    let e = task_files(&t, &secrets, &configs).unwrap_err();
    assert!(e.to_string().starts_with("config app not found"), "{e}");
}

#[test]
fn what_cannot_be_honoured_is_refused() {
    let (secrets, configs) = data();
    let mut no_file = secret("s1", "db_pw", "db_pw");
    no_file.file = None;
    let e = task_files(&task(vec![no_file], vec![]), &secrets, &configs).unwrap_err();
    assert!(matches!(e, FileRefError::NoFile { .. }), "{e}");
    assert!(e.to_string().contains("secret db_pw"), "{e}");

    let mut runtime = config("c1", "cred", "");
    runtime.file = None;
    runtime.runtime = Some(HashMap::new());
    let e = task_files(&task(vec![], vec![runtime]), &secrets, &configs).unwrap_err();
    assert!(
        e.to_string().contains("credential specs") && e.to_string().contains("cred"),
        "{e}"
    );

    let mut no_config_file = config("c1", "nginx", "x");
    no_config_file.file = None;
    let e = task_files(&task(vec![], vec![no_config_file]), &secrets, &configs).unwrap_err();
    assert!(matches!(
        e,
        FileRefError::NoFile {
            kind: FileKind::Config,
            ..
        }
    ));

    let e = task_files(
        &task(vec![secret("s1", "db_pw", "")], vec![]),
        &secrets,
        &configs,
    )
    .unwrap_err();
    assert!(matches!(e, FileRefError::NoFileName { .. }), "{e}");

    let mut bad_uid = secret("s1", "db_pw", "db_pw");
    bad_uid.file.as_mut().unwrap().uid = Some("www-data".into());
    let e = task_files(&task(vec![bad_uid], vec![]), &secrets, &configs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "secret db_pw: invalid uid \"www-data\": use a number"
    );

    let mut setuid = secret("s1", "db_pw", "db_pw");
    setuid.file.as_mut().unwrap().mode = Some(0o4755);
    let e = task_files(&task(vec![setuid], vec![]), &secrets, &configs).unwrap_err();
    assert!(
        matches!(e, FileRefError::BadMode { mode: 0o4755, .. }),
        "{e}"
    );

    let garbled = BTreeMap::from([("s1".to_string(), FileData("%%%".into()))]);
    let e = task_files(
        &task(vec![secret("s1", "db_pw", "db_pw")], vec![]),
        &garbled,
        &configs,
    )
    .unwrap_err();
    assert!(matches!(e, FileRefError::BadData { .. }), "{e}");
}

#[test]
fn both_base64_alphabets_are_taken() {
    assert_eq!(decode("Pz8-").unwrap(), b"??>");
    assert_eq!(decode("Pz8+").unwrap(), b"??>");
    assert_eq!(decode("aGk").unwrap(), b"hi");
    assert_eq!(decode("").unwrap(), b"");
}

#[test]
fn file_data_never_shows_in_debug() {
    let (secrets, configs) = data();
    let files = task_files(
        &task(vec![secret("s1", "db_pw", "db_pw")], vec![]),
        &secrets,
        &configs,
    )
    .unwrap();
    let text = format!("{files:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("<7 bytes>"), "{text}");
}

#[test]
fn files_become_read_only_bind_mounts() {
    let (secrets, configs) = data();
    let files = task_files(
        &task(
            vec![secret("s1", "db_pw", "db_pw")],
            vec![config("c1", "nginx", "nginx.conf")],
        ),
        &secrets,
        &configs,
    )
    .unwrap();
    let paths = vec![
        PathBuf::from("/run/swarm-node/secrets/t1/secrets/0"),
        PathBuf::from("/run/swarm-node/secrets/t1/configs/0"),
    ];
    let mounts = bind_mounts(&files, &paths);
    assert_eq!(
        mounts,
        vec![
            Mount {
                target: Some("/run/secrets/db_pw".into()),
                source: Some("/run/swarm-node/secrets/t1/secrets/0".into()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            },
            Mount {
                target: Some("/nginx.conf".into()),
                source: Some("/run/swarm-node/secrets/t1/configs/0".into()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }
        ]
    );
}

#[test]
fn the_store_sits_beside_the_socket() {
    let files = HostTaskFiles::beside_socket(Path::new("/run/swarm-node/swarm-node.sock"));
    assert_eq!(files.root(), Path::new(DEFAULT_ROOT));
    assert_eq!(
        files.task_dir("abc"),
        PathBuf::from("/run/swarm-node/secrets/abc")
    );
    let files = HostTaskFiles::beside_socket(Path::new("/tmp/x/node1/node.sock"));
    assert_eq!(files.root(), Path::new("/tmp/x/node1/secrets"));
}

#[tokio::test]
async fn task_ids_that_are_not_plain_names_are_refused() {
    let fake = FakeTaskFiles::new();
    let real = HostTaskFiles::new("/nonexistent-root-for-a-test");
    for id in ["", ".", "..", "a/b", "../x"] {
        assert!(matches!(
            fake.prepare(id, &[]).await,
            Err(TaskFilesError::BadTaskId(_))
        ));
        assert!(matches!(
            real.prepare(id, &[]).await,
            Err(TaskFilesError::BadTaskId(_))
        ));
        assert!(matches!(
            real.release(id).await,
            Err(TaskFilesError::BadTaskId(_))
        ));
    }
}

#[tokio::test]
async fn the_fake_keeps_stores_and_sweeps_the_others() {
    let (secrets, configs) = data();
    let files = task_files(
        &task(
            vec![secret("s1", "db_pw", "db_pw")],
            vec![config("c1", "nginx", "nginx.conf")],
        ),
        &secrets,
        &configs,
    )
    .unwrap();
    let fake = FakeTaskFiles::new();
    let paths = fake.prepare("t1", &files).await.unwrap();
    assert_eq!(
        paths,
        vec![
            PathBuf::from("/fake/t1/secrets/0"),
            PathBuf::from("/fake/t1/configs/0")
        ]
    );
    fake.prepare("t2", &files).await.unwrap();
    fake.prepare("t3", &files).await.unwrap();
    assert_eq!(fake.store("t1").unwrap()[0].1.data, b"hunter2");
    let gone = fake
        .sweep(&BTreeSet::from(["t1".to_string(), "t9".to_string()]))
        .await
        .unwrap();
    assert_eq!(gone, vec!["t2".to_string(), "t3".to_string()]);
    assert_eq!(fake.tasks(), vec!["t1".to_string()]);
    fake.release("t1").await.unwrap();
    fake.release("t1").await.unwrap();
    assert!(fake.tasks().is_empty());

    fake.set_prepare_error(Some("disk on fire"));
    let e = fake.prepare("t4", &files).await.unwrap_err();
    assert!(e.to_string().contains("disk on fire"), "{e}");
    assert!(fake.store("t4").is_none());
}

#[tokio::test]
async fn without_stores_a_task_with_files_cannot_be_prepared() {
    let e = NoTaskFiles.prepare("t1", &[]).await.unwrap_err();
    assert!(matches!(e, TaskFilesError::Unavailable(_)), "{e}");
    NoTaskFiles.release("t1").await.unwrap();
    assert!(NoTaskFiles
        .sweep(&BTreeSet::new())
        .await
        .unwrap()
        .is_empty());
}

/// Unmounts whatever a real test left under its root, even when it failed.
struct SweepOnDrop(PathBuf);

impl Drop for SweepOnDrop {
    fn drop(&mut self) {
        let _ = host::sweep(&self.0, &BTreeSet::new());
    }
}

/// The mount options of the mount at `path`, from this process's mountinfo.
fn mount_of(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy();
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&wanted.as_ref()) {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        Some((
            fields[dash + 1].to_string(),
            format!("{},{}", fields[5], fields.get(dash + 3).unwrap_or(&"")),
        ))
    })
}

#[tokio::test]
async fn real_stores_are_read_only_tmpfs_with_owners_and_modes() {
    if std::env::var("SWARMUP_E2E").as_deref() != Ok("1") || !nix::unistd::geteuid().is_root() {
        println!("skipped: set SWARMUP_E2E=1 and run as root to mount real task stores");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("secrets");
    let _guard = SweepOnDrop(root.clone());
    let store = HostTaskFiles::new(&root);

    let (secrets, configs) = data();
    let mut s = secret("s1", "db_pw", "db_pw");
    s.file.as_mut().unwrap().uid = Some("1000".into());
    s.file.as_mut().unwrap().gid = Some("1001".into());
    s.file.as_mut().unwrap().mode = Some(0o400);
    let files = task_files(
        &task(vec![s], vec![config("c1", "nginx", "nginx.conf")]),
        &secrets,
        &configs,
    )
    .unwrap();

    let paths = store.prepare("task1", &files).await.unwrap();
    let dir = store.task_dir("task1");
    assert_eq!(paths[0], dir.join("secrets/0"));
    assert_eq!(paths[1], dir.join("configs/0"));

    // A tmpfs, read-only, nodev, nosuid, noexec, 0700.
    let (fstype, options) = mount_of(&dir).expect("the store is a mount");
    assert_eq!(fstype, "tmpfs");
    for opt in ["ro", "nodev", "nosuid", "noexec", "mode=700"] {
        assert!(options.split(',').any(|o| o == opt), "{opt} in {options}");
    }
    let st = nix::sys::statfs::statfs(&dir).unwrap();
    assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let meta = std::fs::metadata(&paths[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), b"hunter2");
    let meta = std::fs::metadata(&paths[1]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
    assert_eq!(std::fs::read(&paths[1]).unwrap(), b"listen 80;\n");

    // Not even root writes there.
    let write = std::fs::OpenOptions::new().write(true).open(&paths[1]);
    assert_eq!(
        write.unwrap_err().raw_os_error(),
        Some(nix::libc::EROFS),
        "read-only"
    );
    let create = std::fs::write(dir.join("secrets/new"), b"x");
    assert_eq!(create.unwrap_err().raw_os_error(), Some(nix::libc::EROFS));

    // Preparing again makes the store afresh, on one mount.
    let again = store.prepare("task1", &files[1..]).await.unwrap();
    assert_eq!(again, vec![dir.join("configs/0")]);
    assert!(!paths[0].exists());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir_text = dir.to_string_lossy().into_owned();
    let mounted = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(dir_text.as_str()))
        .count();
    assert_eq!(mounted, 1, "one tmpfs per store");

    // Release: unmounted and gone; twice is fine.
    store.release("task1").await.unwrap();
    assert!(!dir.exists());
    assert!(mount_of(&dir).is_none());
    store.release("task1").await.unwrap();

    // Sweep: leftovers go (a store, a bare directory from a crash), kept ones stay.
    store.prepare("keep", &files).await.unwrap();
    store.prepare("old", &files).await.unwrap();
    std::fs::create_dir(root.join("half-made")).unwrap();
    let mut gone = store
        .sweep(&BTreeSet::from(["keep".to_string()]))
        .await
        .unwrap();
    gone.sort();
    assert_eq!(gone, vec!["half-made".to_string(), "old".to_string()]);
    assert!(!store.task_dir("old").exists());
    assert!(mount_of(&store.task_dir("old")).is_none());
    assert_eq!(
        std::fs::read(store.task_dir("keep").join("secrets/0")).unwrap(),
        b"hunter2"
    );
    store.sweep(&BTreeSet::new()).await.unwrap();
    assert!(mount_of(&store.task_dir("keep")).is_none());
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}
