// `caption` events come per sentence and, where the engine times words (eSpeak NG), per word
// as well, with nothing in the event to say which. A caption found in the current sentence,
// after the last word, is taken as a word of it; anything else starts a new line.

export class CaptionTrack {
  constructor() {
    this.lines = []; // the sentences of one utterance, in order
    this.cursor = 0; // end of the last word in the current line
    this.word = null; // [start, end) of the word playing now, in the current line
  }

  get line() {
    return this.lines.length ? this.lines[this.lines.length - 1] : "";
  }

  /** Feed one caption's text; true when it started a new line, false for a word of the current one. */
  feed(text) {
    const at = this.lines.length ? this.line.indexOf(text, this.cursor) : -1;
    if (at >= 0) {
      this.word = [at, at + text.length];
      this.cursor = at + text.length;
      return false;
    }
    this.lines.push(text);
    this.cursor = 0;
    this.word = null;
    return true;
  }
}
