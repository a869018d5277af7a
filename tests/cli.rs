//! The `oodkit` command line, run as a user runs it: its exit codes and
//! messages, and its figures against the library's (and, on a tiny ONNX
//! graph, against the network computed directly). The MNIST test (ignored
//! without `OODKIT_DATA_DIR`) writes the 0-4 / 5-9 test images as PNG
//! folders and checks `oodkit eval` through a trained toy convnet against
//! the library path to 1e-6.

#[path = "common/onnx_mlp.rs"]
mod onnx_mlp;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{Array1, Array2, Array4};
use oodkit::datasets::npy;
use oodkit::detectors::{
    Dice, Fdbd, FeatureDetector, GradNorm, Klm, Knn, Nci, NnGuide, PrincipalDims, Residual,
    ScoreFeatures, ScoreLogits, Vim, Vra,
};
use oodkit::metrics::{auroc, bench_metrics};
use serde_json::Value;

const METRICS: [&str; 4] = ["auroc", "fpr95tpr", "aupr_in", "aupr_out"];

/// Command-line arguments from strings and paths alike.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(OsString::from(AsRef::<OsStr>::as_ref(&$a))),*]
    };
}

fn oodkit(args: Vec<OsString>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oodkit"))
        .args(args)
        .output()
        .expect("the oodkit binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing what the command said when it failed.
#[test]
fn knn_fits_an_approximate_index_with_hnsw_and_scores_through_it() {
    let s = onnx_setup();
    let detector = s.dir("knn_hnsw.oodkit");
    ok(s.run(
        "fit",
        args![
            "--data",
            s.dir("train"),
            "--detector",
            "knn",
            "--k",
            "2",
            "--hnsw",
            "8",
            "--ef-search",
            "64",
            "--out",
            detector,
        ],
    ));
    let state = &oodkit::detectors::file::describe(&detector)
        .unwrap()
        .metadata["detector"]["states"][0];
    assert_eq!(state["approximate"]["connectivity"], 8, "{state}");
    assert_eq!(state["approximate"]["ef_search"], 64, "{state}");
    // Over 40 stored features, a search of 64 candidates reaches them all:
    // the exact scores.
    let knn = Knn::new(2)
        .unwrap()
        .fit_features(onnx_mlp::direct(&s.fit).0.view(), Array1::zeros(40).view())
        .unwrap();
    let expected = knn
        .score_features(onnx_mlp::direct(&s.incoming).0.view())
        .unwrap();
    let csv = s.dir("hnsw_scores.csv");
    ok(s.run(
        "score",
        args![
            "--detector",
            detector,
            "--data",
            s.dir("incoming"),
            "--out",
            csv
        ],
    ));
    let rows = read_csv(&csv);
    assert_eq!(rows.len(), expected.len());
    for (row, e) in rows.iter().zip(&expected) {
        assert!((row.score - e).abs() < 1e-5, "{} vs {e}", row.score);
    }

    // Tuning an index that is not asked for is a usage error naming --hnsw;
    // a connectivity out of range says the range.
    let out = s.run(
        "fit",
        args![
            "--data",
            s.dir("train"),
            "--detector",
            "knn",
            "--ef-search",
            "64",
            "--out",
            s.dir("never.oodkit")
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--hnsw"), "{}", stderr(&out));
    let err = fails_naming(
        s.run(
            "fit",
            args![
                "--data",
                s.dir("train"),
                "--detector",
                "knn",
                "--hnsw",
                "2",
                "--out",
                s.dir("never.oodkit")
            ],
        ),
        "hnsw",
    );
    assert!(err.contains("4 to 64"), "{err}");
    assert!(!s.dir("never.oodkit").exists());
}

fn ok(out: Output) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Asserts exit code 1 with one line of error that names `what`.
fn fails_naming(out: Output, what: &str) -> String {
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(&out)
    );
    assert_eq!(err.trim().lines().count(), 1, "one line of error: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(what), "the error names {what:?}: {err}");
    err
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_metrics(json: &Value, id: &Array1<f32>, ood: &Array1<f32>, tolerance: f64) {
    let expected = bench_metrics(id, ood, &METRICS).unwrap();
    for metric in METRICS {
        let got = json[metric]
            .as_f64()
            .unwrap_or_else(|| panic!("{metric} in {json}"));
        let want = expected.get(metric).unwrap();
        assert!((got - want).abs() <= tolerance, "{metric}: {got} vs {want}");
    }
}

#[test]
fn help_shows_examples_and_usage_errors_exit_with_two() {
    let help = ok(oodkit(args!["--help"]));
    let text = stdout(&help);
    assert!(
        text.contains("Examples:") && text.contains("oodkit eval"),
        "{text}"
    );
    for command in ["metrics", "fit", "score", "eval"] {
        ok(oodkit(args![command, "--help"]));
    }
    let version = stdout(&ok(oodkit(args!["--version"])));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    let fit = args![
        "fit",
        "--model",
        "m.onnx",
        "--detector",
        "mls",
        "--out",
        "d"
    ];
    for args in [
        args![],
        args!["no-such-command"],
        args![
            "fit",
            "--model",
            "m.onnx",
            "--detector",
            "nope",
            "--out",
            "d"
        ],
        // Two networks, then none.
        [fit.clone(), args!["--resnet", "w.safetensors"]].concat(),
        args!["fit", "--detector", "mls", "--out", "d"],
        [fit.clone(), args!["--batch-size", "0"]].concat(),
        [fit.clone(), args!["--size", "32"]].concat(),
        [fit.clone(), args!["--crop"]].concat(),
        [fit.clone(), args!["--normalize", "sometimes"]].concat(),
        args!["metrics", "--id", "a.npy"],
        args![
            "eval",
            "--model",
            "m.onnx",
            "--id",
            "a",
            "--ood",
            "b",
            "--detectors",
            "mls,nope"
        ],
    ] {
        let out = oodkit(args.clone());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("error:") || err.contains("Usage:"), "{err}");
        assert!(err.contains("Usage:") || err.contains("--help"), "{err}");
    }
}

#[test]
fn metrics_of_npy_files_match_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let id = Array1::from_iter((0..300).map(|i| ((i * 37) % 101) as f32 / 10.0));
    let ood = Array1::from_iter((0..200).map(|i| ((i * 53) % 97) as f32 / 8.0 + 2.0));
    let (id_path, ood_path) = (dir.path().join("in.npy"), dir.path().join("out.npy"));
    npy::write_vector(&id_path, id.view()).unwrap();
    npy::write_vector(&ood_path, ood.view()).unwrap();
    let json = dir.path().join("m.json");
    let plots = dir.path().join("figures");
    let out = ok(oodkit(args![
        "metrics", "--id", id_path, "--ood", ood_path, "--json", json, "--plots", plots,
    ]));
    assert!(
        stdout(&out).contains("300 ID and 200 OOD scores"),
        "{}",
        stdout(&out)
    );
    assert_metrics(&read_json(&json), &id, &ood, 0.0);
    for figure in ["scores.png", "roc.png"] {
        let (w, h) = image::image_dimensions(plots.join(figure)).unwrap();
        assert!(w > 100 && h > 100);
    }

    // Missing, corrupt, of the wrong rank: exit 1 naming the file.
    let metrics = |id: &Path| oodkit(args!["metrics", "--id", id, "--ood", ood_path]);
    fails_naming(metrics(&dir.path().join("missing.npy")), "missing.npy");
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy at all").unwrap();
    fails_naming(metrics(&junk), "junk.npy");
    let matrix = dir.path().join("matrix.npy");
    npy::write_matrix(&matrix, Array2::<f32>::zeros((3, 2)).view()).unwrap();
    fails_naming(metrics(&matrix), "matrix.npy");
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "value,file\n1.0,a.png\n").unwrap();
    fails_naming(metrics(&csv), "bad.csv");
    let nan = dir.path().join("nan.csv");
    std::fs::write(&nan, "score,file\n1.0,a.png\nabc,b.png\n").unwrap();
    fails_naming(metrics(&nan), "row 3");
    let empty = dir.path().join("empty.npy");
    npy::write_vector(&empty, Array1::<f32>::zeros(0).view()).unwrap();
    let out = metrics(&empty);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// The pixels (0-255) of image `i` of a set: 2x2, distinct across sets.
fn pixels(set: u32, i: u32) -> [u8; 4] {
    let seed = set * 1000 + i;
    std::array::from_fn(|j| ((seed * 37 + j as u32 * 91 + seed * seed * 7) % 251) as u8)
}

/// Writes `n` 2x2 grey PNGs of `set` into `dir` (named 000.png, ...) and
/// returns them as the network's inputs (pixels / 255, in file order).
fn write_images(dir: &Path, set: u32, n: u32) -> Array4<f32> {
    std::fs::create_dir_all(dir).unwrap();
    let mut inputs = Array4::zeros((n as usize, 1, 2, 2));
    for i in 0..n {
        let p = pixels(set, i);
        image::GrayImage::from_raw(2, 2, p.to_vec())
            .unwrap()
            .save(dir.join(format!("{i:03}.png")))
            .unwrap();
        for (j, v) in p.iter().enumerate() {
            inputs[[i as usize, 0, j / 2, j % 2]] = f32::from(*v) / 255.0;
        }
    }
    inputs
}

/// A row of a score CSV.
struct Row {
    score: f32,
    p_value: Option<f64>,
    is_ood: Option<bool>,
    class: i64,
    file: String,
}

/// A score CSV's rows.
fn read_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("score,p_value,is_ood,class,file"));
    lines
        .map(|line| {
            let f: Vec<&str> = line.splitn(5, ',').collect();
            Row {
                score: f[0].parse().unwrap(),
                p_value: f[1].parse().ok(),
                is_ood: f[2].parse::<u8>().ok().map(|v| v == 1),
                class: f[3].parse().unwrap(),
                file: f[4].to_owned(),
            }
        })
        .collect()
}

fn argmax(row: ndarray::ArrayView1<f32>) -> i64 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as i64
}

struct OnnxSetup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    graph: PathBuf,
    fit: Array4<f32>,
    heldout: Array4<f32>,
    incoming: Array4<f32>,
}

fn onnx_setup() -> OnnxSetup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let graph = root.join("mlp.onnx");
    onnx_mlp::write(&graph, None);
    OnnxSetup {
        fit: write_images(&root.join("train"), 1, 40),
        heldout: write_images(&root.join("heldout"), 2, 25),
        incoming: write_images(&root.join("incoming"), 3, 12),
        graph,
        root,
        _dir: dir,
    }
}

/// The network's options for the 2x2 grey test images.
fn onnx_args(setup: &OnnxSetup) -> Vec<OsString> {
    args![
        "--model",
        setup.graph,
        "--channels",
        "grey",
        "--batch-size",
        "7",
        "--quiet",
    ]
}

impl OnnxSetup {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `oodkit <command>` through the graph, with `rest` (feature
    /// detectors fitted on its "penultimate" node; `score` reads the layer
    /// from the detector file).
    fn run(&self, command: &str, rest: Vec<OsString>) -> Output {
        let layer = match command {
            "score" => args![],
            _ => args!["--layer", "penultimate"],
        };
        oodkit([args![command], onnx_args(self), layer, rest].concat())
    }
}

#[test]
fn fit_and_score_through_onnx_give_the_directly_computed_knn_scores_and_verdicts() {
    let s = onnx_setup();
    let detector = s.dir("knn.oodkit");
    let out = ok(s.run(
        "fit",
        args![
            "--data",
            s.dir("train"),
            "--detector",
            "knn",
            "--k",
            "2",
            "--calibrate",
            s.dir("heldout"),
            "--alpha",
            "0.2",
            "--out",
            detector,
        ],
    ));
    assert!(stdout(&out).contains("calibrated KNN"), "{}", stdout(&out));

    // The same detector on the features computed directly.
    let knn = Knn::new(2)
        .unwrap()
        .fit_features(onnx_mlp::direct(&s.fit).0.view(), Array1::zeros(40).view())
        .unwrap();
    let calibration = knn
        .score_features(onnx_mlp::direct(&s.heldout).0.view())
        .unwrap();
    let (features, logits) = onnx_mlp::direct(&s.incoming);
    let expected = knn.score_features(features.view()).unwrap();

    let score = |data: &str, out: &Path| {
        ok(s.run(
            "score",
            args!["--detector", detector, "--data", s.dir(data), "--out", out],
        ))
    };
    let (csv, npy_out) = (s.dir("scores.csv"), s.dir("scores.npy"));
    let said = stdout(&score("incoming", &csv));
    assert!(said.contains("12 images scored by KNN"), "{said}");
    assert!(said.contains("false-alarm rate of 0.2"), "{said}");
    let rows = read_csv(&csv);
    assert_eq!(rows.len(), 12);
    let mut flagged = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.file, format!("{i:03}.png"));
        let score = row.score;
        assert!(
            (score - expected[i]).abs() < 1e-5,
            "{score} vs {}",
            expected[i]
        );
        // The conformal p-value: (1 + #{calibration scores >= s}) / (n + 1).
        let at_least = calibration.iter().filter(|&&c| c >= score).count();
        let p_expected = (1 + at_least) as f64 / 26.0;
        let p = row.p_value.unwrap();
        assert!((p - p_expected).abs() < 1e-12, "{p} vs {p_expected}");
        assert_eq!(row.is_ood, Some(p_expected <= 0.2));
        flagged += usize::from(p_expected <= 0.2);
        assert_eq!(row.class, argmax(logits.row(i)));
    }
    assert!(said.contains(&format!("{flagged} flagged")), "{said}");
    score("incoming", &npy_out);
    let csv_scores: Array1<f32> = rows.iter().map(|r| r.score).collect();
    assert_eq!(npy::read_vector(&npy_out).unwrap(), csv_scores);

    // The metrics of two score files `oodkit score` wrote.
    let (id_csv, json) = (s.dir("id.csv"), s.dir("m.json"));
    score("heldout", &id_csv);
    ok(oodkit(args![
        "metrics", "--id", id_csv, "--ood", csv, "--json", json
    ]));
    let id_scores: Array1<f32> = read_csv(&id_csv).iter().map(|r| r.score).collect();
    assert_metrics(&read_json(&json), &id_scores, &csv_scores, 0.0);

    // The input recipe travels with the detector: scoring with another
    // normalisation than the fit's is refused, naming the fit's.
    let err = fails_naming(
        s.run(
            "score",
            args![
                "--detector",
                detector,
                "--data",
                s.dir("incoming"),
                "--out",
                s.dir("other.csv"),
                "--normalize",
                "imagenet"
            ],
        ),
        "--normalize",
    );
    assert!(
        err.contains("fitted on images prepared with --normalize unit"),
        "{err}"
    );
    let recipe = &oodkit::detectors::file::describe(detector)
        .unwrap()
        .metadata["annotations"]["input"];
    assert_eq!(recipe["normalize"], "unit", "{recipe}");
    assert_eq!(recipe["channels"], "grey", "{recipe}");
}

#[test]
fn eval_through_onnx_reports_the_directly_computed_metrics() {
    let s = onnx_setup();
    let (report, figures) = (s.dir("report.json"), s.dir("figures"));
    let out = ok(s.run(
        "eval",
        args![
            "--fit-data",
            s.dir("train"),
            "--id",
            s.dir("heldout"),
            "--ood",
            s.dir("incoming"),
            "--detectors",
            "mls,energy,knn,vim",
            "--k",
            "3",
            "--vim-dims",
            "1",
            "--json",
            report,
            "--plots",
            figures,
        ],
    ));
    assert!(stdout(&out).contains("AUROC"), "{}", stdout(&out));
    let report = read_json(&report);
    assert_eq!(report["id"]["images"], 25);
    assert_eq!(report["ood"]["images"], 12);
    // Flat folders: no labels, no accuracy.
    assert!(report.get("accuracy").is_none(), "{report}");

    let (id_features, id_logits) = onnx_mlp::direct(&s.heldout);
    let (ood_features, ood_logits) = onnx_mlp::direct(&s.incoming);
    let mls = |l: &Array2<f32>| -> Array1<f32> {
        l.rows()
            .into_iter()
            .map(|r| -r.fold(f32::NEG_INFINITY, |m, &v| m.max(v)))
            .collect()
    };
    // Energy at T = 1: -log sum exp(logit).
    let energy = |l: &Array2<f32>| -> Array1<f32> {
        l.rows()
            .into_iter()
            .map(|r| -r.mapv(f32::exp).sum().ln())
            .collect()
    };
    let knn = Knn::new(3)
        .unwrap()
        .fit_features(onnx_mlp::direct(&s.fit).0.view(), Array1::zeros(40).view())
        .unwrap();
    // ViM with the last layer the graph holds (its Gemm's constants).
    let vim = Vim::new(PrincipalDims::Count(1))
        .unwrap()
        .with_head(onnx_mlp::w2(), onnx_mlp::b2())
        .unwrap()
        .fit_features(onnx_mlp::direct(&s.fit).0.view(), Array1::zeros(40).view())
        .unwrap();
    let expected = [
        ("mls", mls(&id_logits), mls(&ood_logits)),
        ("energy", energy(&id_logits), energy(&ood_logits)),
        (
            "knn",
            knn.score_features(id_features.view()).unwrap(),
            knn.score_features(ood_features.view()).unwrap(),
        ),
        (
            "vim",
            vim.score_features(id_features.view()).unwrap(),
            vim.score_features(ood_features.view()).unwrap(),
        ),
    ];
    for (name, id, ood) in &expected {
        let got = report["detectors"][name]["auroc"].as_f64().unwrap();
        let want = auroc(id, ood).unwrap();
        assert!((got - want).abs() < 1e-6, "{name}: {got} vs {want}");
        assert_metrics(&report["detectors"][name], id, ood, 1e-6);
        for figure in [format!("scores_{name}.png"), format!("roc_{name}.png")] {
            assert!(figures.join(&figure).is_file(), "{figure}");
        }
    }

    // Beyond --memory-budget, the pass goes to --spill-dir: the same
    // report, said, and nothing left there after.
    let spill = s.dir("spill");
    std::fs::create_dir(&spill).unwrap();
    let spilled_report = s.dir("spilled.json");
    let eval_spilling = |dir: &Path| {
        s.run(
            "eval",
            args![
                "--fit-data",
                s.dir("train"),
                "--id",
                s.dir("heldout"),
                "--ood",
                s.dir("incoming"),
                "--detectors",
                "mls,energy,knn,vim",
                "--k",
                "3",
                "--vim-dims",
                "1",
                "--json",
                spilled_report,
                "--memory-budget",
                "0",
                "--spill-dir",
                dir,
            ],
        )
    };
    let out = ok(eval_spilling(&spill));
    assert!(
        stderr(&out).contains("--memory-budget 0 MB"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&spill.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_json(&spilled_report)["detectors"], report["detectors"]);
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    fails_naming(eval_spilling(&s.dir("no-such-dir")), "--spill-dir");

    // ViM on a layer the last layer does not read: an error naming the node to use.
    let err = fails_naming(
        oodkit(args![
            "eval",
            "--model",
            s.graph,
            "--layer",
            "hidden",
            "--channels",
            "grey",
            "--quiet",
            "--fit-data",
            s.dir("train"),
            "--id",
            s.dir("heldout"),
            "--ood",
            s.dir("incoming"),
            "--detectors",
            "vim",
        ]),
        "vim",
    );
    assert!(err.contains("\"penultimate\""), "{err}");
}

#[test]
#[ignore = "needs ONNX Runtime's library (pip install onnxruntime, or ORT_DYLIB_PATH)"]
fn onnx_runtime_scores_as_tract_does_and_its_options_are_checked() {
    let s = onnx_setup();
    let detector = s.dir("knn.oodkit");
    // Fitted through tract, scored through either engine: the same scores.
    ok(s.run(
        "fit",
        args![
            "--data",
            s.dir("train"),
            "--detector",
            "knn",
            "--k",
            "2",
            "--out",
            detector
        ],
    ));
    let mut scores = Vec::new();
    for engine in ["tract", "onnxruntime"] {
        let csv = s.dir(&format!("{engine}.csv"));
        ok(s.run(
            "score",
            args![
                "--detector",
                detector,
                "--data",
                s.dir("incoming"),
                "--out",
                csv,
                "--engine",
                engine
            ],
        ));
        scores.push(read_csv(&csv));
    }
    assert_eq!(scores[0].len(), 12);
    for (a, b) in scores[0].iter().zip(&scores[1]) {
        assert!(
            (a.score - b.score).abs() < 1e-5,
            "{} vs {}",
            a.score,
            b.score
        );
        assert_eq!(a.class, b.class);
    }
    // eval through ONNX Runtime: the report tract gives.
    let mut aurocs = Vec::new();
    for engine in ["tract", "onnxruntime"] {
        let report = s.dir(&format!("{engine}.json"));
        ok(s.run(
            "eval",
            args![
                "--fit-data",
                s.dir("train"),
                "--id",
                s.dir("heldout"),
                "--ood",
                s.dir("incoming"),
                "--detectors",
                "mls,knn,vim",
                "--k",
                "3",
                "--vim-dims",
                "1",
                "--engine",
                engine,
                "--json",
                report
            ],
        ));
        let report = read_json(&report);
        aurocs
            .push(["mls", "knn", "vim"].map(|d| report["detectors"][d]["auroc"].as_f64().unwrap()));
    }
    assert_eq!(aurocs[0], aurocs[1]);

    let eval = |extra: Vec<OsString>| {
        s.run(
            "eval",
            [
                args![
                    "--id",
                    s.dir("heldout"),
                    "--ood",
                    s.dir("incoming"),
                    "--detectors",
                    "mls"
                ],
                extra,
            ]
            .concat(),
        )
    };
    // A GPU with tract, or ONNX Runtime for the crate's networks: the flag to use.
    fails_naming(eval(args!["--device", "cuda"]), "--engine onnxruntime");
    // Not a library where ORT_DYLIB_PATH points: an error naming the file, no crash.
    let junk = s.dir("libonnxruntime.so");
    std::fs::write(&junk, b"not a shared library").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oodkit"))
        .args(
            [
                args!["eval"],
                onnx_args(&s),
                args![
                    "--engine",
                    "onnxruntime",
                    "--id",
                    s.dir("heldout"),
                    "--ood",
                    s.dir("incoming"),
                    "--detectors",
                    "mls"
                ],
            ]
            .concat(),
        )
        .env("ORT_DYLIB_PATH", &junk)
        .output()
        .unwrap();
    let err = fails_naming(out, &junk.display().to_string());
    assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    // Named but missing.
    let out = Command::new(env!("CARGO_BIN_EXE_oodkit"))
        .args(
            [
                args!["eval"],
                onnx_args(&s),
                args![
                    "--engine",
                    "onnxruntime",
                    "--id",
                    s.dir("heldout"),
                    "--ood",
                    s.dir("incoming"),
                    "--detectors",
                    "mls"
                ],
            ]
            .concat(),
        )
        .env("ORT_DYLIB_PATH", s.dir("nowhere.so"))
        .output()
        .unwrap();
    fails_naming(out, "nowhere.so");
}

/// Runs oodkit, failing the test (and killing it) if it has not ended
/// within 60 s: a command that blocks on a pipe must not hang the suite.
fn oodkit_within_a_minute(args: Vec<OsString>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oodkit"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("oodkit still ran after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn outputs_never_replace_inputs_or_special_files_and_csv_rows_survive_odd_names() {
    let s = onnx_setup();
    let graph_bytes = std::fs::read(&s.graph).unwrap();
    let fit = |out: &Path| {
        s.run(
            "fit",
            args!["--data", s.dir("train"), "--detector", "mls", "--out", out],
        )
    };
    // The network, an image of the fit data: refused, left as they were.
    let err = fails_naming(fit(&s.graph), "--out");
    assert!(err.contains("--model"), "{err}");
    assert_eq!(std::fs::read(&s.graph).unwrap(), graph_bytes);
    let image = s.dir("train").join("000.png");
    let image_bytes = std::fs::read(&image).unwrap();
    let err = fails_naming(fit(&image), "--out");
    assert!(err.contains("inside --data"), "{err}");
    assert_eq!(std::fs::read(&image).unwrap(), image_bytes);
    // A folder as the output file.
    fails_naming(fit(&s.dir("heldout")), "not a regular file");

    let detector = s.dir("mls.oodkit");
    ok(fit(&detector));
    let detector_bytes = std::fs::read(&detector).unwrap();
    let score = |out: &Path| {
        s.run(
            "score",
            args![
                "--detector",
                detector,
                "--data",
                s.dir("incoming"),
                "--out",
                out
            ],
        )
    };
    // The detector file as the scores' output (a .csv name is required, so
    // through a link named .csv).
    let link = s.dir("link.csv");
    std::fs::hard_link(&detector, &link).unwrap();
    fails_naming(score(&link), "--detector");
    assert_eq!(std::fs::read(&detector).unwrap(), detector_bytes);

    // Image names with a comma, a quote and a line break: one row each.
    for (i, name) in ["a,b.png", "say \"hi\".png", "two\nlines.png"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            s.dir("incoming").join(format!("{i:03}.png")),
            s.dir("incoming").join(name),
        )
        .unwrap();
    }
    let scores = s.dir("scores.csv");
    ok(score(&scores));
    let id_npy = s.dir("id.npy");
    npy::write_vector(&id_npy, Array1::from(vec![0.0_f32, 1.0, 2.0]).view()).unwrap();
    let out = ok(oodkit(args!["metrics", "--id", id_npy, "--ood", scores]));
    assert!(
        stdout(&out).contains("3 ID and 15 OOD scores"),
        "{}",
        stdout(&out)
    );
    // The metrics' report over one of its inputs, its figures into a file.
    let metrics = |extra: Vec<OsString>| {
        oodkit([args!["metrics", "--id", id_npy, "--ood", scores], extra].concat())
    };
    fails_naming(metrics(args!["--json", id_npy]), "--id");
    fails_naming(metrics(args!["--plots", scores]), "not a folder");
    // eval's report over the network, its figures into an input folder.
    let eval = |extra: Vec<OsString>| {
        s.run(
            "eval",
            [
                args![
                    "--id",
                    s.dir("heldout"),
                    "--ood",
                    s.dir("incoming"),
                    "--detectors",
                    "mls"
                ],
                extra,
            ]
            .concat(),
        )
    };
    fails_naming(eval(args!["--json", s.graph]), "--model");
    fails_naming(
        eval(args!["--plots", s.dir("heldout").join("figures")]),
        "inside --id",
    );
    assert_eq!(std::fs::read(&s.graph).unwrap(), graph_bytes);

    // Pipes: as an output, refused and left a pipe; as an input, an error
    // at once rather than a reader blocked forever.
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let fifo = s.dir("pipe.csv");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        fails_naming(score(&fifo), "not a regular file");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let out = oodkit_within_a_minute(args!["metrics", "--id", fifo, "--ood", scores]);
        fails_naming(out, "pipe");
        let out = oodkit_within_a_minute(
            [
                args!["score"],
                onnx_args(&s),
                args![
                    "--detector",
                    fifo,
                    "--data",
                    s.dir("incoming"),
                    "--out",
                    s.dir("x.csv")
                ],
            ]
            .concat(),
        );
        fails_naming(out, "pipe");
    }
}

/// The OpenOOD detectors that need no labels, through ONNX (the last layer
/// read from the graph), against the library on the same features.
#[test]
fn eval_runs_the_openood_detectors_through_onnx() {
    let s = onnx_setup();
    let report = s.dir("openood.json");
    ok(s.run(
        "eval",
        args![
            "--fit-data",
            s.dir("train"),
            "--id",
            s.dir("heldout"),
            "--ood",
            s.dir("incoming"),
            "--detectors",
            "dice,vra,fdbd,nci,nnguide,gradnorm,residual,klm",
            "--k",
            "3",
            "--bank-fraction",
            "0.5",
            "--vim-dims",
            "1",
            "--json",
            report,
        ],
    ));
    let report = read_json(&report);
    let (fit, _) = onnx_mlp::direct(&s.fit);
    let (id_features, id_logits) = onnx_mlp::direct(&s.heldout);
    let (ood_features, ood_logits) = onnx_mlp::direct(&s.incoming);
    let labels = Array1::zeros(fit.nrows());
    let (w, b) = (onnx_mlp::w2(), onnx_mlp::b2());
    macro_rules! on_features {
        ($name:expr, $detector:expr) => {{
            let fitted = $detector
                .with_head(w.clone(), b.clone())
                .unwrap()
                .fit_features(fit.view(), labels.view())
                .unwrap();
            (
                $name,
                fitted.score_features(id_features.view()).unwrap(),
                fitted.score_features(ood_features.view()).unwrap(),
            )
        }};
    }
    let klm = Klm::new()
        .fit_logits(onnx_mlp::direct(&s.fit).1.view())
        .unwrap();
    let expected = [
        on_features!("dice", Dice::default()),
        on_features!("vra", Vra::default()),
        on_features!("fdbd", Fdbd::default()),
        on_features!("nci", Nci::default()),
        on_features!("nnguide", NnGuide::new(3, 0.5).unwrap()),
        on_features!("gradnorm", GradNorm::new()),
        on_features!("residual", Residual::new(PrincipalDims::Count(1)).unwrap()),
        (
            "klm",
            klm.score_logits(id_logits.view()).unwrap(),
            klm.score_logits(ood_logits.view()).unwrap(),
        ),
    ];
    for (name, id, ood) in &expected {
        let got = report["detectors"][name]["auroc"].as_f64().unwrap();
        let want = auroc(id, ood).unwrap();
        assert!((got - want).abs() < 1e-6, "{name}: {got} vs {want}");
    }
}

#[test]
fn bad_folders_and_files_are_errors_naming_the_path() {
    let s = onnx_setup();
    let detector = s.dir("knn.oodkit");
    let fit = |data: &Path, extra: Vec<OsString>| {
        let base = args![
            "--data",
            data,
            "--detector",
            "knn",
            "--k",
            "1",
            "--out",
            detector
        ];
        s.run("fit", [base, extra].concat())
    };

    // A corrupt image stops the run, named; --skip-unreadable skips it and says so.
    let broken = s.dir("broken");
    write_images(&broken, 4, 5);
    std::fs::write(broken.join("002.png"), b"\x89PNG but not really").unwrap();
    fails_naming(fit(&broken, args![]), "002.png");
    let out = ok(fit(&broken, args!["--skip-unreadable"]));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("002.png") && said.contains("skipped 1"),
        "{said}"
    );

    // An empty folder, a class folder without images, a missing folder.
    let empty = s.dir("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_naming(fit(&empty, args![]), "empty");
    let classes = s.dir("classes");
    write_images(&classes.join("cat"), 5, 3);
    std::fs::create_dir_all(classes.join("dog")).unwrap();
    fails_naming(fit(&classes, args![]), "dog");
    fails_naming(fit(&s.dir("nowhere"), args![]), "nowhere");

    // RGB images into a one-channel graph, a layer the graph lacks, no fit data.
    let knn_on = |network: Vec<OsString>| {
        let rest = args![
            "--data",
            s.dir("train"),
            "--detector",
            "knn",
            "--out",
            detector
        ];
        oodkit([args!["fit", "--quiet"], network, rest].concat())
    };
    let out = knn_on(args!["--model", s.graph, "--layer", "penultimate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    fails_naming(
        knn_on(args![
            "--model",
            s.graph,
            "--layer",
            "no_such_node",
            "--channels",
            "grey"
        ]),
        "no_such_node",
    );
    fails_naming(
        s.run("fit", args!["--detector", "knn", "--out", detector]),
        "--data",
    );

    // Missing and wrong detector files, a missing graph, an unknown output format.
    let score = |detector: &Path, out: &Path| {
        s.run(
            "score",
            args![
                "--detector",
                detector,
                "--data",
                s.dir("train"),
                "--out",
                out
            ],
        )
    };
    let csv = s.dir("s.csv");
    fails_naming(score(&s.dir("absent.oodkit"), &csv), "absent.oodkit");
    fails_naming(score(&s.graph, &csv), "mlp.onnx");
    ok(fit(&s.dir("train"), args![]));
    fails_naming(score(&detector, &s.dir("s.txt")), "s.txt");
    fails_naming(
        oodkit(args![
            "score",
            "--model",
            s.dir("gone.onnx"),
            "--channels",
            "grey",
            "--detector",
            detector,
            "--data",
            s.dir("train"),
            "--out",
            csv,
        ]),
        "gone.onnx",
    );
    // Images prepared otherwise than at fit are refused, not scored.
    let resized = args![
        "--detector",
        detector,
        "--data",
        s.dir("train"),
        "--out",
        csv
    ];
    let err = fails_naming(
        s.run("score", [resized, args!["--size", "3x3"]].concat()),
        "fitted on 1x2x2 inputs",
    );
    assert!(err.contains("1x3x3") && err.contains("--size"), "{err}");
    // An uncalibrated detector scores but gives no verdicts.
    let out = ok(score(&detector, &csv));
    assert!(stdout(&out).contains("uncalibrated"), "{}", stdout(&out));
    assert!(
        read_csv(&csv)
            .iter()
            .all(|r| r.p_value.is_none() && r.is_ood.is_none())
    );
}

/// The MNIST test images of `classes` as PNGs: `root/<digit>/<index>.png`
/// when `by_class`, else flat `root/<index>.png`.
#[cfg(feature = "burn")]
fn write_mnist(root: &Path, data: &oodkit::OodDataset, by_class: bool) {
    for (i, (image, label)) in data.inputs().outer_iter().zip(data.labels()).enumerate() {
        let dir = if by_class {
            root.join(label.to_string())
        } else {
            root.to_path_buf()
        };
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = image.iter().map(|&v| v as u8).collect();
        image::GrayImage::from_raw(28, 28, pixels)
            .unwrap()
            .save(dir.join(format!("{i:05}.png")))
            .unwrap();
    }
}

#[cfg(feature = "burn")]
#[test]
#[ignore = "needs OODKIT_DATA_DIR (MNIST); trains the toy convnet for one epoch on part of 0-4"]
fn eval_on_mnist_png_folders_matches_the_library_to_1e_6() {
    use oodkit::Batch;
    use oodkit::datasets::{PrepareConfig, Split, mnist};
    use oodkit::detectors::{Detector, Energy, Mls};
    use oodkit::model::BurnModel;
    use oodkit::nets::ToyConvnetConfig;
    use oodkit::training::{Checkpoint, TrainConfig, train};

    let data_dir = PathBuf::from(
        std::env::var_os("OODKIT_DATA_DIR").expect("OODKIT_DATA_DIR names the data root"),
    )
    .join("mnist");
    let classes = [0, 1, 2, 3, 4];
    let (train_in, _) = mnist::load(&data_dir, Split::Train)
        .unwrap()
        .split_by_class(&classes)
        .unwrap();
    let train_in = train_in.subset(&(0..12000).collect::<Vec<_>>()).unwrap();
    let (test_in, test_out) = mnist::load(&data_dir, Split::Test)
        .unwrap()
        .split_by_class(&classes)
        .unwrap();
    let batches = || {
        PrepareConfig::new(128).preprocess(|mut b: Batch| {
            b.inputs /= 255.0;
            Ok(b)
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let device = burn::tensor::Device::flex();
    device.seed(0);
    let network = ToyConvnetConfig::new(1, 28, 10).init(&device).unwrap();
    let trained = train(
        network,
        &train_in.prepare(&batches().shuffle(0)).unwrap(),
        None,
        &TrainConfig::new(1).with_seed(0).with_save_dir(dir.path()),
    )
    .unwrap();
    let checkpoint = Checkpoint::Last.path(dir.path());
    let model = BurnModel::new(trained.model, &device);

    let (fit_dir, id_dir, ood_dir) = (
        dir.path().join("fit"),
        dir.path().join("id"),
        dir.path().join("ood"),
    );
    write_mnist(&fit_dir, &train_in, false);
    write_mnist(&id_dir, &test_in, true);
    write_mnist(&ood_dir, &test_out, false);
    let report = dir.path().join("report.json");
    ok(oodkit(args![
        "eval",
        "--toy-convnet",
        checkpoint,
        "--fit-data",
        fit_dir,
        "--id",
        id_dir,
        "--ood",
        ood_dir,
        "--detectors",
        "mls,energy,knn,vim",
        "--json",
        report,
        "--quiet",
    ]));
    let report = read_json(&report);
    assert_eq!(report["id"]["images"], test_in.len());
    assert_eq!(report["ood"]["images"], test_out.len());

    let fit = train_in.prepare(&batches()).unwrap();
    let (id, ood) = (
        test_in.prepare(&batches()).unwrap(),
        test_out.prepare(&batches()).unwrap(),
    );
    let scores = |fitted: &dyn Fn(&dyn oodkit::datasets::BatchSource) -> Array1<f32>| {
        (fitted(&id), fitted(&ood))
    };
    let knn = Knn::new(50).unwrap().fit(&model, Some(&fit)).unwrap();
    let vim = Vim::default().fit(&model, Some(&fit)).unwrap();
    let mls = Mls::new().fit(&model, None).unwrap();
    let energy = Energy::new(1.0).unwrap().fit(&model, None).unwrap();
    let expected = [
        ("mls", scores(&|d| mls.score(d).unwrap().scores)),
        ("energy", scores(&|d| energy.score(d).unwrap().scores)),
        ("knn", scores(&|d| knn.score(d).unwrap().scores)),
        ("vim", scores(&|d| vim.score(d).unwrap().scores)),
    ];
    for (name, (id, ood)) in &expected {
        let got = report["detectors"][name]["auroc"].as_f64().unwrap();
        let want = auroc(id, ood).unwrap();
        println!("{name}: AUROC {got} (command line) vs {want} (library)");
        assert!((got - want).abs() < 1e-6, "{name}: {got} vs {want}");
        assert!(want > 0.7, "{name} detects 5-9 after an epoch: {want}");
    }
    // The ID folder's class folders are the digits: the accuracy is the network's.
    let predictions = mls.score(&id).unwrap().predictions();
    let right = predictions
        .iter()
        .zip(test_in.labels())
        .filter(|(p, l)| p == l)
        .count();
    let accuracy = right as f64 / test_in.len() as f64;
    let got = report["accuracy"].as_f64().unwrap();
    assert!((got - accuracy).abs() < 1e-12, "{got} vs {accuracy}");
}

/// Score files damaged at random (bytes flipped, cut out, inserted, the
/// file cut short): `oodkit metrics` reads each as the scores it holds or
/// exits 1 with one line naming the file — never a panic, never more
/// scores than rows written, never a score that is not a number.
#[test]
fn damaged_score_files_are_errors_or_the_scores_they_hold() {
    use rand::{RngExt, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let id = Array1::from_iter((0..40).map(|i| ((i * 37) % 11) as f32 / 4.0));
    let ood = Array1::from_iter((0..30).map(|i| ((i * 53) % 13) as f32 / 3.0 + 1.0));
    let ood_path = dir.path().join("out.npy");
    npy::write_vector(&ood_path, ood.view()).unwrap();
    // A CSV as `oodkit score` writes it, names with a comma and a quote.
    let mut csv = String::from("score,p_value,is_ood,class,file\n");
    for (i, s) in id.iter().enumerate() {
        csv.push_str(&format!("{s},,,{},\"img, \"\"{i}\"\".png\"\n", i % 3));
    }
    let npy_path = dir.path().join("in.npy");
    npy::write_vector(&npy_path, id.view()).unwrap();
    let originals = [
        ("in.csv", csv.into_bytes()),
        ("in.npy", std::fs::read(&npy_path).unwrap()),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(34);
    let json = dir.path().join("m.json");
    for trial in 0..240 {
        let (name, original) = &originals[trial % 2];
        let mut damaged = original.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..damaged.len().max(1));
            match rng.random_range(0..4) {
                0 if !damaged.is_empty() => damaged[at] ^= 1 << rng.random_range(0..8),
                1 if !damaged.is_empty() => {
                    damaged.remove(at);
                }
                2 => damaged.insert(at.min(damaged.len()), rng.random()),
                _ => damaged.truncate(at),
            }
        }
        let path = dir.path().join(name);
        std::fs::write(&path, &damaged).unwrap();
        let _ = std::fs::remove_file(&json);
        let out = oodkit(args![
            "metrics", "--id", path, "--ood", ood_path, "--json", json
        ]);
        match out.status.code() {
            Some(0) => {
                let report = read_json(&json);
                let said = stdout(&out);
                let count: usize = said
                    .split(" ID and ")
                    .next()
                    .and_then(|s| s.split_whitespace().last())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("trial {trial}: {said}"));
                assert!(count <= id.len() + 3, "trial {trial}: {count} scores");
                for metric in METRICS {
                    let value = report[metric].as_f64();
                    assert!(value.is_some_and(f64::is_finite), "trial {trial}: {report}");
                }
            }
            Some(1) => {
                fails_naming(out, name);
            }
            other => panic!("trial {trial}: exit {other:?}: {}", stderr(&out)),
        }
    }
}

#[test]
fn a_detector_fitted_on_arrays_is_served_through_the_graph_s_last_linear_input() {
    // Fitted on the penultimate features computed elsewhere (a Python
    // hook's, say) with the default layer: the file names no layer, and
    // `score` reads the input of the graph's last linear layer.
    let s = onnx_setup();
    let (fit, _) = onnx_mlp::direct(&s.fit);
    let knn = oodkit::detectors::registry::find("knn")
        .unwrap()
        .build(&oodkit::detectors::registry::Params::new().set("k", 2))
        .unwrap()
        .fit_precomputed(&oodkit::detectors::Precomputed::features(fit.view()).unwrap())
        .unwrap();
    let detector = s.dir("arrays.oodkit");
    knn.save(&detector).unwrap();
    let out = s.dir("scores.npy");
    ok(s.run(
        "score",
        args![
            "--detector",
            detector,
            "--data",
            s.dir("incoming"),
            "--out",
            out
        ],
    ));
    let expected = Knn::new(2)
        .unwrap()
        .fit_features(fit.view(), Array1::zeros(40).view())
        .unwrap()
        .score_features(onnx_mlp::direct(&s.incoming).0.view())
        .unwrap();
    let found = npy::read_vector(&out).unwrap();
    for (a, e) in found.iter().zip(&expected) {
        assert!((a - e).abs() < 1e-5, "{a} through the graph, {e} directly");
    }
}
