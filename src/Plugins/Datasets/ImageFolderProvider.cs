using Microsoft.Extensions.Logging;
using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets;

/// <summary>
/// Images in class folders: DataDir/&lt;class&gt;/**/*.{jpg,jpeg,png,bmp,gif,webp}, or with split folders
/// DataDir/train/&lt;class&gt;/..., DataDir/val (or valid, validation)/&lt;class&gt;/..., DataDir/test/&lt;class&gt;/....
/// Missing splits are carved from train: test by the "test-fraction" setting (default 0.1), validation by
/// ValidationFraction. Class names are the train folder names in ordinal order.
/// At Open every file's header is checked (format, size, "max-pixels" limit, default 40 megapixels) — setting
/// "verify" = "full" decodes every file instead. Bad files stop with a DatasetException or, with
/// BadSamplePolicy.Skip, are left out (count and first names logged). Decoding happens in Get (on loader threads).
/// </summary>
public sealed class ImageFolderProvider : IDatasetProvider
{
    public static readonly string[] Extensions = { ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp" };
    private static readonly string[] ValNames = { "val", "valid", "validation" };

    public string Name => "image-folder";
    public string Description => "Images in class folders (root/<class>/*.jpg|png|bmp|gif|webp, optional train/val/test split folders)";

    public DatasetSplits Open(DatasetRequest request)
    {
        string root = request.DataDir ?? throw new DatasetException("image-folder: no data folder given (set DataDir / --data-dir to a folder of class folders)");
        if (!Directory.Exists(root)) throw new DatasetException($"{root}: image folder not found");
        long maxPixels = SettingsReader.GetLong(request, "max-pixels", ImageDecoding.DefaultMaxPixels, 1, 1L << 32);
        long maxFileBytes = SettingsReader.GetLong(request, "max-file-bytes", ImageDecoding.DefaultMaxFileBytes, 1, 1L << 31);
        double testFraction = SettingsReader.GetDouble(request, "test-fraction", 0.1, 0, 0.9);
        string verify = SettingsReader.GetString(request, "verify") ?? "header";
        if (verify is not ("header" or "full")) throw new DatasetException($"setting 'verify' must be 'header' or 'full', got '{verify}'");
        var decoder = new ImageDecoding(maxPixels, maxFileBytes);

        string? trainDir = Path.Combine(root, "train");
        bool splitFolders = Directory.Exists(trainDir);
        if (!splitFolders) trainDir = root;
        string? valDir = splitFolders ? ValNames.Select(n => Path.Combine(root, n)).FirstOrDefault(Directory.Exists) : null;
        string? testDir = splitFolders && Directory.Exists(Path.Combine(root, "test")) ? Path.Combine(root, "test") : null;

        var classes = Directory.GetDirectories(trainDir).Select(Path.GetFileName).OfType<string>()
            .Where(n => !n.StartsWith('.')).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        if (!splitFolders) classes = classes.Where(c => c is not ("val" or "valid" or "validation" or "test")).ToArray();
        if (classes.Length == 0) throw new DatasetException($"{trainDir}: no class folders (expected {trainDir}/<class>/<images>)");

        var bad = new List<string>();
        var train = Scan("image-folder/train-all", trainDir, classes, decoder, verify, request, bad);
        var val = valDir is null ? null : Scan("image-folder/validation", valDir, classes, decoder, verify, request, bad);
        var test = testDir is null ? null : Scan("image-folder/test", testDir, classes, decoder, verify, request, bad);
        if (bad.Count > 0)
            request.Logger?.LogWarning("image-folder: skipped {Count} unreadable image file(s), first: {Files}", bad.Count, string.Join("; ", bad.Take(5)));
        if (train.Count == 0) throw new DatasetException($"{trainDir}: no readable images in the class folders");

        IImageDataset trainSet = train;
        IImageDataset testSet;
        if (test is null)
        {
            var (kept, held) = Splits.Carve(train.Count, testFraction, SplitMix64.Hash(request.Seed, 0x54455354));
            trainSet = new SubsetDataset("image-folder/train-all", train, kept);
            testSet = new SubsetDataset("image-folder/test-all", train, held);
        }
        else testSet = test;
        return Splits.Build(Name, request, trainSet, val, testSet);
    }

    private static FolderDataset Scan(string name, string dir, string[] classes, ImageDecoding decoder, string verify,
        DatasetRequest request, List<string> bad)
    {
        var items = new List<(string Path, int Label)>();
        foreach (var sub in Directory.GetDirectories(dir).OrderBy(d => d, StringComparer.Ordinal))
        {
            var cls = Path.GetFileName(sub);
            if (cls.StartsWith('.')) continue;
            int label = Array.IndexOf(classes, cls);
            if (label < 0)
            {
                if (dir == request.DataDir && cls is "val" or "valid" or "validation" or "test") continue;
                throw new DatasetException($"{sub}: class folder '{cls}' does not exist in the training data (classes: {string.Join(", ", classes)})");
            }
            var files = Directory.EnumerateFiles(sub, "*", SearchOption.AllDirectories)
                .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .OrderBy(f => f, StringComparer.Ordinal);
            foreach (var f in files) items.Add((f, label));
        }
        // Check headers (or decode) in parallel; decide in file order so results do not depend on scheduling.
        var errors = new string?[items.Count];
        Parallel.For(0, items.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) }, i =>
        {
            try
            {
                if (verify == "full") decoder.Decode(items[i].Path, items[i].Label);
                else decoder.Identify(items[i].Path);
            }
            catch (DatasetException e) { errors[i] = e.Message; }
        });
        var kept = new List<(string, int)>(items.Count);
        for (int i = 0; i < items.Count; i++)
        {
            if (errors[i] is null) { kept.Add(items[i]); continue; }
            if (request.OnBadSample == BadSamplePolicy.Stop) throw new DatasetException(errors[i]!);
            lock (bad) bad.Add(errors[i]!);
        }
        return new FolderDataset(name, classes, kept.ToArray(), decoder);
    }
}

public sealed class FolderDataset : IImageDataset
{
    private readonly (string Path, int Label)[] _items;
    private readonly ImageDecoding _decoder;

    public FolderDataset(string name, IReadOnlyList<string> classes, (string Path, int Label)[] items, ImageDecoding decoder)
    {
        Name = name; ClassNames = classes; _items = items; _decoder = decoder;
    }

    public string Name { get; }
    public int Count => _items.Length;
    public IReadOnlyList<string> ClassNames { get; }
    public string PathOf(int index) => _items[index].Path;
    public int LabelOf(int index) => _items[index].Label;

    public ImageSample Get(int index)
    {
        if ((uint)index >= (uint)_items.Length) throw new ArgumentOutOfRangeException(nameof(index), index, $"dataset '{Name}' has {Count} samples");
        return _decoder.Decode(_items[index].Path, _items[index].Label);
    }
}
