//! Chat templates for instruct models. The families are recognized from the Jinja template a
//! model ships (`tokenizer.chat_template` in GGUF, `chat_template` in tokenizer_config.json) by
//! their turn markers, and rendered here for one optional system turn and one user turn with
//! the assistant turn opened — the only shape a sampling job needs.

use crate::error::{EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// `<|im_start|>role\n…<|im_end|>\n` (SmolLM2, Qwen2).
    ChatMl,
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
    /// `<start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n` (Gemma; no system role).
    Gemma,
    /// The prompt as it is (base models, completion-style prompts).
    None,
}

impl Template {
    pub const NAMES: [&'static str; 5] = ["auto", "chatml", "llama3", "gemma", "none"];

    /// `name` from the spec; `auto` picks from the model's own template text (none → `None`).
    pub fn resolve(name: &str, model_template: Option<&str>) -> Result<Self> {
        match name {
            "chatml" => Ok(Self::ChatMl),
            "llama3" => Ok(Self::Llama3),
            "gemma" => Ok(Self::Gemma),
            "none" => Ok(Self::None),
            "auto" => Ok(match model_template {
                Some(t) if t.contains("<|im_start|>") => Self::ChatMl,
                Some(t) if t.contains("<|start_header_id|>") => Self::Llama3,
                Some(t) if t.contains("<start_of_turn>") => Self::Gemma,
                _ => Self::None,
            }),
            other => Err(EngineError::unknown("chat template", other, Self::NAMES)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ChatMl => "chatml",
            Self::Llama3 => "llama3",
            Self::Gemma => "gemma",
            Self::None => "none",
        }
    }

    /// Render a system turn (optional) and a user turn, ending where the assistant speaks.
    pub fn render(&self, system: Option<&str>, user: &str) -> String {
        match self {
            Self::ChatMl => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                s.push_str(&format!(
                    "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                ));
                s
            }
            Self::Llama3 => {
                let mut s = String::from("<|begin_of_text|>");
                if let Some(sys) = system {
                    s.push_str(&format!(
                        "<|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|>"
                    ));
                }
                s.push_str(&format!(
                    "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>\
                     <|start_header_id|>assistant<|end_header_id|>\n\n"
                ));
                s
            }
            Self::Gemma => {
                let user = match system {
                    Some(sys) => format!("{sys}\n\n{user}"),
                    None => user.to_string(),
                };
                format!("<bos><start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n")
            }
            Self::None => match system {
                Some(sys) => format!("{sys}\n\n{user}"),
                None => user.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_the_smollm2_layout() {
        let t = Template::resolve(
            "auto",
            Some("{% for m in messages %}<|im_start|>{{m.role}}"),
        )
        .unwrap();
        assert_eq!(t, Template::ChatMl);
        assert_eq!(
            t.render(Some("Be brief."), "2+2?"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(Template::resolve("auto", None).unwrap(), Template::None);
        assert!(Template::resolve("alpaca", None)
            .unwrap_err()
            .to_string()
            .contains("chatml"));
    }
}
