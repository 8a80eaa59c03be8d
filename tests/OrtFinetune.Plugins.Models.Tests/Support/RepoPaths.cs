namespace OrtFinetune.Plugins.Models.Tests.Support;

public static class RepoPaths
{
    /// <summary>The repository root (the folder holding OrtFinetune.slnx).</summary>
    public static string Root { get; } = FindRoot();

    static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "OrtFinetune.slnx"))) return d.FullName;
        throw new InvalidOperationException("repository root (OrtFinetune.slnx) not found above " + AppContext.BaseDirectory);
    }

    public static string Fixture(params string[] parts) => Path.Combine([Root, "tests", "fixtures", .. parts]);
}
