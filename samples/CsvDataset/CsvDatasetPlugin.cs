using System.Text;
using Microsoft.Extensions.DependencyInjection;
using OrtFinetune.Abstractions;

namespace CsvDatasetSample;

/// <summary>The plugin's entry point: registers one dataset provider.</summary>
public sealed class CsvDatasetPlugin : IPlugin
{
    public string Name => "csv-dataset";
    public void Configure(IServiceCollection services) => services.AddSingleton<IDatasetProvider, CsvDatasetProvider>();
}

/// <summary>
/// <c>--dataset csv --data-dir DIR</c>: DIR holds train.csv and test.csv (val.csv optional), each row
/// "image path,class name" (a header row "path,label" is allowed), paths relative to DIR, images in
/// binary PGM (P5, grayscale) or PPM (P6, RGB) with 8-bit samples.
/// </summary>
public sealed class CsvDatasetProvider : IDatasetProvider
{
    public string Name => "csv";
    public string Description => "images listed in train.csv / test.csv (path,label), PGM/PPM files";

    public DatasetSplits Open(DatasetRequest request)
    {
        var dir = request.DataDir ?? throw new DatasetException("the csv dataset needs --data-dir (a folder with train.csv and test.csv)");
        var train = ReadCsv(Path.Combine(dir, "train.csv"), dir, required: true)!;
        var test = ReadCsv(Path.Combine(dir, "test.csv"), dir, required: true)!;
        var val = ReadCsv(Path.Combine(dir, "val.csv"), dir, required: false);
        var classes = train.Select(r => r.Label).Concat(test.Select(r => r.Label)).Concat(val?.Select(r => r.Label) ?? []).Distinct().Order(StringComparer.Ordinal).ToList();
        if (val == null)
        {
            var rng = new Random(request.Seed);
            var shuffled = train.OrderBy(_ => rng.Next()).ToList();
            int nVal = (int)Math.Round(shuffled.Count * request.ValidationFraction);
            val = shuffled.Take(nVal).ToList();
            train = shuffled.Skip(nVal).ToList();
        }
        List<(string, string)> Cap(List<(string, string)> l) => request.Limit > 0 ? l.Take(request.Limit).ToList() : l;
        return new DatasetSplits(new CsvImages("csv/train", Cap(train), classes), new CsvImages("csv/val", Cap(val), classes), new CsvImages("csv/test", Cap(test), classes));
    }

    static List<(string Path, string Label)>? ReadCsv(string file, string dir, bool required)
    {
        if (!File.Exists(file))
            return required ? throw new DatasetException($"{file}: not found (the csv dataset needs train.csv and test.csv)") : null;
        var rows = new List<(string, string)>();
        int line = 0;
        foreach (var raw in File.ReadLines(file))
        {
            line++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            var parts = raw.Split(',');
            if (parts.Length != 2) throw new DatasetException($"{file}:{line}: expected 'path,label', found {parts.Length} fields");
            if (line == 1 && parts[0].Trim() == "path") continue;
            rows.Add((Path.Combine(dir, parts[0].Trim()), parts[1].Trim()));
        }
        if (rows.Count == 0) throw new DatasetException($"{file}: no rows");
        return rows;
    }
}

sealed class CsvImages(string name, List<(string Path, string Label)> rows, List<string> classes) : IImageDataset
{
    public string Name => name;
    public int Count => rows.Count;
    public IReadOnlyList<string> ClassNames => classes;

    public ImageSample Get(int index)
    {
        var (path, label) = rows[index];
        var (w, h, c, pixels) = Netpbm.Read(path);
        return new ImageSample { Width = w, Height = h, Channels = c, Pixels = pixels, Label = classes.IndexOf(label), Source = path };
    }
}

/// <summary>Binary PGM/PPM (P5/P6, maxval 255) reader with size checks.</summary>
static class Netpbm
{
    public static (int W, int H, int C, byte[] Pixels) Read(string path)
    {
        if (!File.Exists(path)) throw new DatasetException($"{path}: image not found");
        var bytes = File.ReadAllBytes(path);
        int pos = 0;
        string Token()
        {
            while (pos < bytes.Length && (char.IsWhiteSpace((char)bytes[pos]) || bytes[pos] == '#'))
            {
                if (bytes[pos] == '#') while (pos < bytes.Length && bytes[pos] != '\n') pos++;
                else pos++;
            }
            var sb = new StringBuilder();
            while (pos < bytes.Length && !char.IsWhiteSpace((char)bytes[pos]) && sb.Length < 16) sb.Append((char)bytes[pos++]);
            return sb.ToString();
        }
        var magic = Token();
        int c = magic == "P5" ? 1 : magic == "P6" ? 3 : throw new DatasetException($"{path}: not a binary PGM/PPM image (magic '{magic}')");
        if (!int.TryParse(Token(), out var w) || !int.TryParse(Token(), out var h) || !int.TryParse(Token(), out var max) || w <= 0 || h <= 0 || w > 16384 || h > 16384 || max != 255)
            throw new DatasetException($"{path}: bad PGM/PPM header (width, height 1..16384 and maxval 255 expected)");
        pos++;
        long need = (long)w * h * c;
        if (bytes.Length - pos < need) throw new DatasetException($"{path}: truncated image ({bytes.Length - pos} of {need} bytes)");
        return (w, h, c, bytes.AsSpan(pos, (int)need).ToArray());
    }
}
