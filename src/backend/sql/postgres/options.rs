//! The URL: the options passed on to sqlx, the driver URL without this crate's own options, and
//! the secrets (passwords in every form they may take) that messages must never show.

use crate::hash::decode_hex_into;

/// The options handed to sqlx.
pub(super) const DRIVER_OPTIONS: [&str; 13] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "options",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "statement-cache-capacity",
];

/// The query string of `url` without ckpt's own options, for sqlx.
pub(super) fn driver_url(url: &str, driver: &[(String, String)]) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    if driver.is_empty() {
        return base.to_owned();
    }
    let query: Vec<String> = driver.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", query.join("&"))
}

/// Every form of the password sqlx may use (from the URL's userinfo, raw and percent-decoded,
/// from a `password=` option, or from `PGPASSWORD`): only to scrub it from messages.
pub(super) fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            secrets.push(password.to_owned());
            secrets.push(percent_decode(password));
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some(("password", v)) = pair.split_once('=') {
                secrets.push(v.to_owned());
                secrets.push(percent_decode(v));
            }
        }
    }
    if let Ok(p) = std::env::var("PGPASSWORD") {
        secrets.push(p);
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `%XX`-decodes `text` (invalid escapes are kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text.get(i + 1..i + 3).and_then(|h| {
            let mut byte = [0u8];
            decode_hex_into(h, &mut byte).ok().map(|()| byte[0])
        });
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::super::schema::valid_schema;
    use super::*;

    #[test]
    fn secrets_are_found_in_every_form() {
        let s = secrets_of("postgres://bob:p%40ss@db/app?password=other&sslmode=require");
        assert!(s.contains(&"p%40ss".to_owned()) && s.contains(&"p@ss".to_owned()));
        assert!(s.contains(&"other".to_owned()));
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }

    #[test]
    fn ckpt_options_are_stripped_for_the_driver() {
        let driver = vec![("sslmode".to_owned(), "require".to_owned())];
        assert_eq!(
            driver_url(
                "postgres://h/db?schema=x&sslmode=require&timeout=5s",
                &driver
            ),
            "postgres://h/db?sslmode=require"
        );
        assert_eq!(
            driver_url("postgres://h/db?schema=x", &[]),
            "postgres://h/db"
        );
        assert!(valid_schema("t_1a") && !valid_schema("1a") && !valid_schema("A"));
        assert!(!valid_schema("a;drop") && !valid_schema(""));
    }
}
