using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtFinetune.Host.Logging;

/// <summary>
/// metrics.csv in the layout of PyTorch Lightning's <c>CSVLogger</c>: a header of every metric key seen so
/// far (in the order first seen), one row per logged record (a step, an epoch's validation, the test), empty
/// cells where a record has no value for a column, CRLF line ends (Python's csv module). As in Lightning, a
/// record with a key the header lacks rewrites the whole file with the wider header (here atomically:
/// a temporary file renamed over it); other records are appended. A key whose value has only ever been
/// null (no loss scale in 32-true) gets no column, as Lightning never receives such a value.
/// </summary>
public sealed class CsvMetricsLogger : IMetricsLogger
{
    const string Eol = "\r\n";
    readonly List<string> _columns = new();
    readonly List<Dictionary<string, string>> _rows = new();
    StreamWriter? _writer;
    public string FilePath { get; }

    /// <param name="path">The file.</param>
    /// <param name="append">A resumed run: an existing file's columns and rows are kept and new rows follow them.</param>
    public CsvMetricsLogger(string path, bool append)
    {
        FilePath = path;
        if (append && File.Exists(path))
        {
            var lines = ReadRecords(File.ReadAllText(path));
            if (lines.Count > 0)
            {
                _columns.AddRange(lines[0]);
                foreach (var cells in lines.Skip(1))
                {
                    var row = new Dictionary<string, string>();
                    for (int i = 0; i < _columns.Count && i < cells.Count; i++) if (cells[i].Length > 0) row[_columns[i]] = cells[i];
                    _rows.Add(row);
                }
            }
        }
        Rewrite();
    }

    public void Log(JsonObject record)
    {
        var row = new Dictionary<string, string>();
        bool wider = false;
        foreach (var (k, v) in record)
        {
            if (v == null) continue;
            row[k] = v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : v.ToJsonString();
            if (!_columns.Contains(k)) { _columns.Add(k); wider = true; }
        }
        _rows.Add(row);
        if (wider) Rewrite();
        else { _writer!.Write(Line(row)); _writer.Flush(); }
    }

    string Line(Dictionary<string, string> row) => string.Join(",", _columns.Select(c => Quote(row.GetValueOrDefault(c, "")))) + Eol;

    /// <summary>The whole file: header and every row, written to a temporary file and renamed over the old one.</summary>
    void Rewrite()
    {
        _writer?.Dispose();
        _writer = null;
        var tmp = FilePath + ".tmp";
        var sb = new StringBuilder();
        if (_columns.Count > 0)
        {
            sb.Append(string.Join(",", _columns.Select(Quote))).Append(Eol);
            foreach (var r in _rows) sb.Append(Line(r));
        }
        File.WriteAllText(tmp, sb.ToString());
        File.Move(tmp, FilePath, true);
        _writer = new StreamWriter(new FileStream(FilePath, FileMode.Append, FileAccess.Write, FileShare.Read));
    }

    /// <summary>Python csv's QUOTE_MINIMAL: quotes only a cell holding a comma, a quote or a line break.</summary>
    static string Quote(string cell) =>
        cell.IndexOfAny([',', '"', '\r', '\n']) < 0 ? cell : "\"" + cell.Replace("\"", "\"\"") + "\"";

    /// <summary>The records of a CSV text (RFC 4180: quoted cells may hold commas, quotes and line breaks).</summary>
    internal static List<List<string>> ReadRecords(string text)
    {
        var records = new List<List<string>>();
        var record = new List<string>();
        var cell = new StringBuilder();
        bool quoted = false, any = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < text.Length && text[i + 1] == '"') { cell.Append('"'); i++; }
                else if (c == '"') quoted = false;
                else cell.Append(c);
                continue;
            }
            switch (c)
            {
                case '"': quoted = true; any = true; break;
                case ',': record.Add(cell.ToString()); cell.Clear(); any = true; break;
                case '\r': break;
                case '\n':
                    record.Add(cell.ToString()); cell.Clear();
                    records.Add(record); record = new List<string>(); any = false;
                    break;
                default: cell.Append(c); any = true; break;
            }
        }
        if (any || cell.Length > 0) { record.Add(cell.ToString()); records.Add(record); }
        return records;
    }

    public void Dispose()
    {
        try { _writer?.Dispose(); } catch (IOException) { }
    }
}
