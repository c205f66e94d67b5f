//! `#[derive(Event)]` for strata: use it through `strata_core::Event`
//! (feature `derive`, on by default), which documents it.

use std::collections::BTreeSet;

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Expr, ExprLit, Fields, Lit, LitStr, Path, parse_macro_input};

/// Implements `strata_core::Event` for an enum; see the docs of
/// `strata_core::Event`.
#[proc_macro_derive(Event, attributes(strata))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// What one variant declares.
struct Variant {
    ident: syn::Ident,
    /// The name serde gives it (`#[serde(rename)]`, else the identifier).
    serde_name: String,
    /// The stored event type (`#[strata(rename)]`, else the serde name).
    event_type: String,
    version: u32,
    /// (from version, function), one per step of the chain.
    upcasts: Vec<(u32, Path)>,
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(Event)] takes an enum, one variant per event type; implement Event by hand for other shapes",
        ));
    };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| {
            for shape in ["tag", "content", "untagged", "rename_all", "rename_all_fields"] {
                if meta.path.is_ident(shape) {
                    return Err(meta.error(format!(
                        "#[derive(Event)] stores each variant under its own name, as serde's default \
                         (externally tagged) form does; #[serde({shape})] changes that: rename variants \
                         one by one, or implement Event by hand"
                    )));
                }
            }
            if meta.input.peek(syn::Token![=]) {
                let _: Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                meta.parse_nested_meta(|_| Ok(()))?;
            }
            Ok(())
        })?;
    }
    let mut variants = Vec::new();
    let mut seen = BTreeSet::new();
    for v in &data.variants {
        let variant = parse_variant(v)?;
        if !seen.insert(variant.event_type.clone()) {
            return Err(syn::Error::new_spanned(
                &v.ident,
                format!("two variants are stored as event type `{}`", variant.event_type),
            ));
        }
        check_chain(v, &variant)?;
        variants.push(variant);
    }
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let idents: Vec<_> = variants.iter().map(|v| &v.ident).collect();
    let types: Vec<_> = variants.iter().map(|v| v.event_type.as_str()).collect();
    let tags: Vec<_> = variants.iter().map(|v| v.serde_name.as_str()).collect();
    let versions: Vec<_> = variants.iter().map(|v| v.version).collect();
    let registrations = variants.iter().flat_map(|v| {
        let event_type = v.event_type.as_str();
        v.upcasts
            .iter()
            .map(move |(from, with)| quote! { .register(#event_type, #from, #with) })
    });
    let krate = quote! { ::strata_core };
    // The serde tag of the stored type name, in `decode` and `decode_json`.
    let tag_of = quote! {
        let tag = match event_type {
            #( #types => #tags, )*
            _ => {
                return ::core::result::Result::Err(#krate::Error::UnknownEventType {
                    event_type: event_type.to_owned(),
                    schema_version,
                })
            }
        };
    };
    Ok(quote! {
        impl #impl_generics #krate::Event for #name #ty_generics #where_clause {
            fn event_type(&self) -> &'static str {
                match self {
                    #( Self::#idents { .. } => #types, )*
                }
            }

            fn current_version(event_type: &str) -> u32 {
                match event_type {
                    #( #types => #versions, )*
                    _ => 1,
                }
            }

            fn event_types() -> &'static [&'static str] {
                &[ #( #types ),* ]
            }

            fn upcasters() -> #krate::Upcasters {
                #krate::Upcasters::new() #( #registrations )*
            }

            fn encode(&self) -> #krate::Result<#krate::Value> {
                let tag = match self {
                    #( Self::#idents { .. } => #tags, )*
                };
                #krate::event::encode_tagged(self, tag, #krate::Event::event_type(self))
            }

            fn decode(event_type: &str, schema_version: u32, payload: #krate::Value) -> #krate::Result<Self> {
                #tag_of
                #krate::event::decode_tagged(tag, event_type, schema_version, payload)
            }

            fn decode_json(event_type: &str, schema_version: u32, payload: &str) -> #krate::Result<Self> {
                #tag_of
                #krate::event::decode_tagged_json(tag, event_type, schema_version, payload)
            }
        }
    })
}

fn parse_variant(v: &syn::Variant) -> syn::Result<Variant> {
    let mut serde_name = v.ident.to_string();
    for attr in v.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        // Only `rename = "..."` matters here; other serde options are serde's.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Ok(value) = meta.value() {
                    if let Ok(name) = value.parse::<LitStr>() {
                        serde_name = name.value();
                    }
                }
            } else if meta.input.peek(syn::Token![=]) {
                let _: Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _ = meta.parse_nested_meta(|_| Ok(()));
            }
            Ok(())
        });
    }
    let mut variant = Variant {
        ident: v.ident.clone(),
        event_type: serde_name.clone(),
        serde_name,
        version: 1,
        upcasts: Vec::new(),
    };
    for attr in v.attrs.iter().filter(|a| a.path().is_ident("strata")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let name: LitStr = meta.value()?.parse()?;
                if name.value().is_empty() {
                    return Err(meta.error("an event type name cannot be empty"));
                }
                variant.event_type = name.value();
            } else if meta.path.is_ident("version") {
                variant.version = int(&meta.value()?.parse()?)?;
                if variant.version == 0 {
                    return Err(meta.error("schema versions start at 1"));
                }
            } else if meta.path.is_ident("upcast") {
                let (mut from, mut with) = (None, None);
                meta.parse_nested_meta(|step| {
                    if step.path.is_ident("from") {
                        from = Some(int(&step.value()?.parse()?)?);
                    } else if step.path.is_ident("with") {
                        with = Some(step.value()?.parse::<Path>()?);
                    } else {
                        return Err(step.error("expected `from = N` or `with = path::to::function`"));
                    }
                    Ok(())
                })?;
                match (from, with) {
                    (Some(from), Some(with)) => variant.upcasts.push((from, with)),
                    _ => return Err(meta.error("an upcast needs both `from = N` and `with = function`")),
                }
            } else {
                return Err(
                    meta.error("expected `rename = \"...\"`, `version = N` or `upcast(from = N, with = f)`")
                );
            }
            Ok(())
        })?;
    }
    if matches!(v.fields, Fields::Unnamed(ref f) if f.unnamed.len() > 1) {
        return Err(syn::Error::new_spanned(
            &v.ident,
            "an event variant holds named fields, one value, or nothing",
        ));
    }
    Ok(variant)
}

/// A chain that does not reach the current version is a compile error:
/// every version below it needs exactly one step up.
fn check_chain(v: &syn::Variant, variant: &Variant) -> syn::Result<()> {
    let mut froms = BTreeSet::new();
    for (from, _) in &variant.upcasts {
        if *from >= variant.version {
            return Err(syn::Error::new_spanned(
                &v.ident,
                format!(
                    "`{}` is at version {}: an upcast from version {from} lifts nothing",
                    variant.event_type, variant.version
                ),
            ));
        }
        if !froms.insert(*from) {
            return Err(syn::Error::new_spanned(
                &v.ident,
                format!("two upcasts of `{}` from version {from}", variant.event_type),
            ));
        }
    }
    if let Some(missing) = (1..variant.version).find(|k| !froms.contains(k)) {
        return Err(syn::Error::new_spanned(
            &v.ident,
            format!(
                "`{}` is at version {} but nothing lifts it from version {missing}: \
                 add #[strata(upcast(from = {missing}, with = ...))]",
                variant.event_type, variant.version
            ),
        ));
    }
    Ok(())
}

fn int(expr: &Expr) -> syn::Result<u32> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse(),
        other => Err(syn::Error::new_spanned(other, "expected a number")),
    }
}
