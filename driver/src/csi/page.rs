//! Pagination of the List RPCs (ListVolumes, ListSnapshots).
//!
//! Entries are listed in the order of their ID, and a `next_token` is the ID the next
//! page starts at, so an entry deleted between two pages does not invalidate the token
//! and nothing is listed twice.

use std::fmt::Display;

use crate::error::Error;

/// `max_entries` as a page size: 0 means no limit, negative is INVALID_ARGUMENT.
pub fn page_size(max_entries: i32) -> Result<usize, Error> {
    match usize::try_from(max_entries) {
        Ok(0) => Ok(usize::MAX),
        Ok(n) => Ok(n),
        Err(_) => Err(Error::InvalidArgument {
            field: "max_entries",
            reason: format!("{max_entries} is negative"),
        }),
    }
}

/// A `starting_token`: empty for the first page, else an ID of the kind being listed
/// (`parse` decides); anything else is ABORTED, as the spec asks.
pub fn start<K, E>(
    token: &str,
    parse: impl FnOnce(&str) -> Result<K, E>,
) -> Result<Option<K>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    parse(token)
        .map(Some)
        .map_err(|_| Error::InvalidToken(token.to_owned()))
}

/// The page of `items` (sorted by `key`) starting at `start`, at most `size` long, and
/// the token of the page after it (empty on the last page).
pub fn page<'a, T, K>(
    items: &'a [T],
    key: impl Fn(&T) -> &K,
    start: Option<&K>,
    size: usize,
) -> (&'a [T], String)
where
    K: Ord + Display,
{
    let begin = start.map_or(0, |s| items.partition_point(|item| key(item) < s));
    let rest = &items[begin..];
    let len = rest.len().min(size);
    let next = rest
        .get(len)
        .map(|item| key(item).to_string())
        .unwrap_or_default();
    (&rest[..len], next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once_even_when_an_entry_goes_between_pages() {
        let mut items = vec![1, 3, 5, 7, 9];
        let (first, token) = page(&items, |i| i, None, 2);
        assert_eq!((first, token.as_str()), (&[1, 3][..], "5"));
        // The entry the token names is deleted before the next call.
        items.retain(|&i| i != 5);
        let start: u32 = token.parse().unwrap();
        let (second, token) = page(&items, |i| i, Some(&start), 2);
        assert_eq!((second, token.as_str()), (&[7, 9][..], ""));
    }

    #[test]
    fn sizes_and_tokens_are_checked() {
        assert_eq!(page_size(0).unwrap(), usize::MAX);
        assert_eq!(page_size(3).unwrap(), 3);
        assert!(matches!(page_size(-1), Err(Error::InvalidArgument { .. })));
        assert_eq!(start("", str::parse::<u32>).unwrap(), None);
        assert_eq!(start("7", str::parse::<u32>).unwrap(), Some(7));
        assert!(matches!(
            start("x", str::parse::<u32>),
            Err(Error::InvalidToken(_))
        ));
    }
}
