//! Results: a human table, or one JSON object per scenario.

use std::fmt::Write as _;
use std::time::Duration;

/// One number of a scenario, with its baseline from the same run when there is one.
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// (what the baseline is, its value): the ratio printed is value / baseline.
    pub baseline: Option<(&'static str, f64)>,
    /// The target, as text, such as `<= 1.10x`.
    pub target: Option<String>,
    pub met: Option<bool>,
}

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub metrics: Vec<Metric>,
}

impl Scenario {
    /// The value of the metric named `name`, if the scenario has one.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }
}

impl Metric {
    pub fn plain(name: &'static str, value: f64, unit: &'static str) -> Metric {
        Metric {
            name,
            value,
            unit,
            baseline: None,
            target: None,
            met: None,
        }
    }

    pub fn millis(name: &'static str, value: Duration) -> Metric {
        Metric::plain(name, ms(value), "ms")
    }

    pub fn against(mut self, what: &'static str, baseline: f64) -> Metric {
        self.baseline = Some((what, baseline));
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Metric {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.map(|(_, base)| self.value / base)
    }
}

pub fn table(scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:>14} {:<6} {:>10} {:<24} {:<12}",
        "scenario", "metric", "value", "unit", "ratio", "baseline", "target"
    );
    for scenario in scenarios {
        let _ = writeln!(out, "-- {}: {}", scenario.name, scenario.what);
        for m in &scenario.metrics {
            let ratio = m.ratio().map_or(String::new(), |r| format!("{r:.2}x"));
            let baseline = m
                .baseline
                .map_or(String::new(), |(what, v)| format!("{what} {}", number(v)));
            let target = match (&m.target, m.met) {
                (Some(t), Some(true)) => format!("{t} ok"),
                (Some(t), _) => format!("{t} MISSED"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<10} {:<26} {:>14} {:<6} {:>10} {:<24} {}",
                scenario.name,
                m.name,
                number(m.value),
                m.unit,
                ratio,
                baseline,
                target
            );
        }
    }
    out
}

pub fn json(scenario: &Scenario) -> String {
    let mut out = format!(
        "{{\"scenario\":{},\"what\":{}",
        quote(scenario.name),
        quote(scenario.what)
    );
    for m in &scenario.metrics {
        let _ = write!(out, ",{}:{}", quote(m.name), m.value);
        if let Some((what, base)) = m.baseline {
            let _ = write!(
                out,
                ",{}:{},{}:{}",
                quote(&format!("{}_baseline", m.name)),
                base,
                quote(&format!("{}_ratio", m.name)),
                base.max(f64::MIN_POSITIVE).recip() * m.value
            );
            let _ = write!(
                out,
                ",{}:{}",
                quote(&format!("{}_baseline_is", m.name)),
                quote(what)
            );
        }
        if let Some(met) = m.met {
            let _ = write!(out, ",{}:{met}", quote(&format!("{}_target_met", m.name)));
        }
    }
    out.push('}');
    out
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `duration` in milliseconds, the unit every time in the report is in.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
