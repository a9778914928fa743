//! A script line as the shell splits it: quotes, backslashes, comments, `$NAME`/`${NAME}`
//! expansion (bounded).

use super::*;

/// Most bytes a line may hold once its variables are expanded (a rule is a few hundred): an
/// `A=$A$A` doubling chain stops here with an error instead of taking the machine's memory.
pub const MAX_EXPANDED: usize = 64 * 1024;

/// Splits a shell line into words: quotes, backslashes, `$NAME` / `${NAME}` from `vars`
/// (unknown: empty, as the shell), `#` comments. Single quotes keep everything literal. The
/// expanded words may hold at most [`MAX_EXPANDED`] bytes in all.
pub(super) fn words(line: &str, vars: &HashMap<String, String>) -> Result<Vec<String>, Refusal> {
    let mut total = 0usize;
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                match chars.next() {
                    Some(n) if quote.is_none() || matches!(n, '"' | '\\' | '$' | '`') => {
                        cur.push(n)
                    }
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => {}
                }
            }
            (_, '$') => {
                in_word = true;
                let name: String = if chars.peek() == Some(&'{') {
                    chars.next();
                    let n: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    n
                } else {
                    let mut n = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            n.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    n
                };
                if name.is_empty() {
                    cur.push('$');
                } else {
                    let value = vars.get(&name).map_or("", String::as_str);
                    total += value.len();
                    if total > MAX_EXPANDED {
                        return Err(refuse!(
                            "${name} expands the line past {MAX_EXPANDED} bytes (a runaway variable?)"
                        ));
                    }
                    cur.push_str(value);
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}
